"""``visctr run``: world → every method of ``pipeline.methods`` → ``results.json`` + report.

The run is a loop over two tables (``ENCODERS``, ``METHODS``). Each stage writes into its
own folder of the run directory (``RunLayout``) and is cached by ``StageRunner``: a
rerun skips every stage whose key (config + upstream content digests) and outputs are
unchanged, so a killed run resumes where it stopped and a config change recomputes only
what it touches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from visctr.config import dump_yaml, to_dict
from visctr.io import write_json, write_text
from visctr.pipeline.bias import (
    aggregate_bias,
    aggregate_ctr_head_tail,
    aggregate_selection,
    ctr_head_tail_rows,
    representation_rows,
    selection_rows,
    selection_spaces,
)
from visctr.pipeline.layout import RunLayout, ctr_training_seed
from visctr.pipeline.methods import CTR_VARIANTS, METHODS, descriptions, encoder_order
from visctr.pipeline.results import BY_CATEGORY, METRICS, aggregate, comparisons, format_table
from visctr.pipeline.stage import StageRunner

WORLD_OUTPUTS = ("data/*.parquet", "data/impressions/*.parquet", "data/images/*.npy")
EMBEDDING_OUTPUTS = ("items.parquet", "queries.parquet")


def run(
    preset: str = "small",
    *,
    out: str | Path,
    config: str | Path | None = None,
    seeds: int = 1,
    seed: int = 0,
    ctr_seeds: int = 1,
    world: str | Path | None = None,
    catalog: str | None = None,
    data_dir: str | None = None,
    workers: int | None = None,
    restart: bool = False,
    trainer: dict | None = None,
) -> dict:
    """Everything ``visctr run`` does: the world, the seven methods, evaluation, the A/B
    test, ``results.json`` and ``report.md`` in ``out``.

    Args:
        preset: ``tiny``, ``small`` or ``full``: the world's size and the training budget
            (with ``world``, the budget only).
        out: the run directory: new, empty, or an earlier run's (its finished stages are
            reused when their config is the same).
        config: a YAML file with sections ``world``, ``s1``, ``s2``, ``classify``, ``ctr``,
            ``trainer``, ``abtest``, ``ope`` (as ``visctr config show`` prints).
        seeds / seed / ctr_seeds: training seeds, the world seed, CTR models per encoder.
        world: an existing world directory (``visctr simulate`` or ``visctr import``).
        catalog / data_dir: the catalog to simulate over (default Fashion-MNIST).
        workers: processes decoding a folder or manifest catalog.
        restart: recompute every stage.
        trainer: overrides of the ``trainer`` section (``accelerator``, ``devices``, ...).

    Returns:
        The results dict, as written to ``out/results.json``.

    Example:
        >>> import visctr
        >>> res = visctr.run("tiny", out="runs/tiny")                     # doctest: +SKIP
        >>> res["methods"]["S1+S2+D"]["hr@10"]["mean"]                     # doctest: +SKIP
    """
    import os

    from visctr.cli_common import check_out, path_input
    from visctr.errors import InputError
    from visctr.io import claim_out_dir
    from visctr.pipeline.config import resolve_run_config

    out = Path(out)
    config = Path(config) if config is not None else None
    world = Path(world) if world is not None else None
    if world is not None and (catalog, data_dir, workers) != (None, None, None):
        raise InputError(
            "--world reads an existing world: it cannot be combined with "
            "--catalog/--data-dir/--workers"
        )
    check_out(out, "run", path_input(catalog), data_dir, config, world)
    cfg = resolve_run_config(
        preset,
        config,
        seeds=seeds,
        seed=seed,
        ctr_seeds=ctr_seeds,
        catalog=catalog,
        data_dir=data_dir,
        trainer_overrides=trainer,
    )
    if world is not None:
        from visctr.world import World

        World.load(world)  # a bad world fails here, before the run directory is claimed
    before = set(os.listdir(out)) if out.is_dir() else None
    claim_out_dir(out, "run")
    try:
        return run_pipeline(cfg, out, restart=restart, world_dir=world, workers=workers)
    except Exception:  # an error, not a signal: SIGTERM/Ctrl-C keep their checkpoints
        _remove_if_nothing_done(out, before)
        raise


def _remove_if_nothing_done(out: Path, before: set[str] | None) -> None:
    """After a failed run: when no stage finished and no checkpoint was written, remove what
    this run created (the whole directory if it made it), so a failure leaves no output."""
    import os
    import shutil

    from visctr.stagedir import any_progress

    if any_progress(out):
        return  # something to resume from: keep it all
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in set(os.listdir(out)) - before:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_pipeline(
    cfg: Any,
    out: Path,
    restart: bool = False,
    world_dir: Path | None = None,
    workers: int | None = None,
) -> dict:
    """Run everything for ``cfg.seeds`` training seeds; returns the results dict.

    ``world_dir``: an existing world (``visctr import`` or ``simulate``) instead of
    simulating one; it is read, never written, and keyed by its content. Metrics that
    need what the world lacks (a random-exposure log, the simulator's hidden truth) are
    skipped with one line each, and listed under ``skipped`` in ``results.json``."""
    from visctr.ctr import train_ctr
    from visctr.ctr import training as ctr_stage
    from visctr.encoders import embed
    from visctr.encoders import stages as encoder_stage
    from visctr.errors import InputError
    from visctr.eval.ctr import evaluate_ctr
    from visctr.eval.retrieval import evaluate_retrieval
    from visctr.pipeline.report import write_report
    from visctr.s3.artifact import debias_transform
    from visctr.world import World
    from visctr.world.simulate import format_summary, simulate

    layout = RunLayout(Path(out))
    layout.root.mkdir(parents=True, exist_ok=True)
    write_text(dump_yaml(cfg), layout.config)
    stages = StageRunner(restart=restart, echo=click.echo)
    t_start = time.perf_counter()

    if world_dir is not None:
        click.echo(f"[world] {world_dir} (preset={cfg.preset} training budget)")
        world = World.load(world_dir)
        world_digest = world.digest()
    else:
        click.echo(f"[world] preset={cfg.preset} seed={cfg.seed}")
        world_digest = stages.run(
            layout.world_stage,
            world_key(cfg),
            lambda d: simulate(cfg.world, cfg.seed, layout.world, workers=workers),
            "world",
            WORLD_OUTPUTS,
        )
        world = World.load(layout.world)
    click.echo("  " + format_summary(world.meta["summary"]).replace("\n", "\n  "))
    skipped = skipped_metrics(world, cfg)
    for what, why in skipped.items():
        click.echo(f"  skipped {what}: {why}")
    retrieval_targets = (
        "labelled retrieval queries"
        if world.has_retrieval_labels
        else "clicked items of test queries (no labelled retrieval set)"
    )
    click.echo(f"  retrieval HR: {retrieval_targets}")

    recipes = encoder_order()
    ab = None
    if cfg.abtest.queries > 0 and "ab_test" not in skipped:
        from visctr.pipeline.abtest import ABTest

        ab = stages.timed("abtest", lambda: ABTest(world, cfg))
    estimates = None
    if "ope" not in skipped:
        from visctr.pipeline.ope import OPE, EmptyLog, headline

        try:
            estimates = stages.timed("ope", lambda: OPE(world, cfg))
        except EmptyLog as e:  # no log with a click to estimate from
            skipped["ope"] = str(e)
            click.echo(f"  skipped ope: {e}")
    ab_per_seed: list[dict] = []
    ope_per_seed: list[dict] = []
    keys = METRICS + BY_CATEGORY
    per_seed: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in METHODS}
    tops: dict[str, np.ndarray] = {}
    curves: dict[str, dict] = {}
    replicates: list[list[int]] = []  # [encoder seed, CTR seed index] of each per-seed entry
    bias_rows: list[dict[str, dict[str, float]]] = []
    selection: list[dict[str, dict]] = []  # the selection-bias gap's rows
    selection_seeds: list[int] = []  # each row's encoder seed
    head_tail: list[dict[str, dict]] = []  # the CTR head/tail table's rows
    head_tail_seeds: list[int] = []
    for i in range(cfg.seeds):
        seed = cfg.seed + i
        click.echo(f"[seed {seed}] ({i + 1}/{cfg.seeds})")
        # content digest of each encoder's output: what the embedding keys chain on (the
        # encoder and CTR stages hash the content of what they read themselves, and are
        # given that same key, so their own record and the run's agree)
        enc_digest: dict[str, str] = {}
        for r in recipes:
            init = layout.encoder(seed, r.init) if r.init else None
            enc_digest[r.name] = stages.run(
                layout.encoder_stage(seed, r.name),
                r.key(cfg, seed, world, init),
                lambda d, r=r, init=init: _train_encoder(r, world, cfg, d, seed, init),
                f"encoder {r.name}",
                encoder_stage.OUTPUTS,
            )
        for r in recipes:
            path = layout.encoder(seed, r.name)
            stages.run(
                layout.embeddings(seed, r.name),
                {"world": world_digest, "encoder": enc_digest[r.name]},
                lambda d, p=path: embed(p, world, d),
                f"embed {r.name}",
                EMBEDDING_OUTPUTS,
            )
            users = [name for name, m in METHODS.items() if m.encoder == r.name]
            if users:  # training curves, labelled by the first method that uses the encoder
                curves.setdefault(users[0], {})[seed] = _read_history(path.parent / "history.json")

        vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the A/B test's, per encoder
        retrieval: dict[str, tuple[dict, np.ndarray]] = {}  # CTR-seed independent ones
        for c in range(cfg.ctr_seeds):
            ctr_seed = ctr_training_seed(seed, c)
            if cfg.ctr_seeds > 1:
                click.echo(f"  [ctr seed {c}] (training seed {ctr_seed})")
            for name, method in METHODS.items():
                emb_dir = layout.embeddings(seed, method.encoder)
                ccfg = CTR_VARIANTS[method.ctr](cfg.ctr)
                reads_ref = method.reference and ccfg.debias.enabled and ccfg.debias.needs_reference
                ref_dir = layout.embeddings(seed, method.reference) if reads_ref else None
                ctr_dir = layout.ctr(seed, method.slug, c)
                stages.run(
                    ctr_dir,
                    ctr_stage.run_key(world, emb_dir, ccfg, ctr_seed, ref_dir),
                    lambda d, e=emb_dir, cc=ccfg, ref=ref_dir, s=ctr_seed: train_ctr(
                        world, e, d, cc, s, reference=ref
                    ),
                    f"ctr {method.slug}" + (f" (ctr seed {c})" if c else ""),
                    ctr_stage.OUTPUTS,
                )
                debias_path = ctr_dir / "debias.pt" if ccfg.debias.enabled else None

                def evaluate(name=name, ctr_dir=ctr_dir, emb_dir=emb_dir, debias_path=debias_path):
                    ctr_m = evaluate_ctr(ctr_dir, world, emb_dir, by_category=world.ground_truth)
                    if debias_path is None and name in retrieval:  # the same encoder, no head
                        ret_m, top = retrieval[name]
                    else:
                        transform = debias_transform(debias_path) if debias_path else None
                        ret_m, top = evaluate_retrieval(world, emb_dir, transform)
                        retrieval[name] = ret_m, top
                    return {**ret_m, **ctr_m}, top

                m, top = stages.timed("evaluate", evaluate)
                if i == 0 and c == 0:
                    tops[name] = top
                for k in keys:
                    per_seed[name][k].append(float(m.get(k, float("nan"))))
                click.echo(
                    f"  {name:9s} HR@10 {m['hr@10']:.3f}  tail HR@10 "
                    f"{m['longtail_hr@10']:.3f}  AUC {m['auc']:.3f}  AUC(random) "
                    f"{m['auc_random_exposure']:.3f}"
                )
            replicates.append([seed, c])
            if "ctr_head_tail" not in skipped:
                row = _ctr_head_tail(stages, layout, world, cfg, seed, c, ctr_seed)
                if isinstance(row, str):
                    skipped["ctr_head_tail"] = row
                    click.echo(f"  skipped ctr_head_tail: {row}")
                else:
                    head_tail.append(row)
                    head_tail_seeds.append(seed)
                    click.echo(
                        "  CTR head − tail random-exposure AUC gap beyond S1+S2: "
                        + "  ".join(
                            f"{n} {r['gap_delta']:+.3f}" for n, r in row.items() if n != "S1+S2"
                        )
                    )
            if "representation_bias" not in skipped:
                try:
                    bias_rows.append(
                        stages.timed(
                            "bias", lambda c=c: representation_rows(layout, world, cfg, seed, c)
                        )
                    )
                except InputError as e:  # e.g. no tail item with vectors on this world
                    skipped["representation_bias"] = str(e)
                    click.echo(f"  skipped representation_bias: {e}")
            if "selection_bias" not in skipped:
                tops_c = {n: t for n, (_, t) in retrieval.items()}
                try:
                    row = stages.timed(
                        "selection_bias",
                        lambda c=c, t=tops_c: selection_rows(
                            world, t, selection_spaces(cfg, c), seed
                        ),
                    )
                    selection.append(row)
                    selection_seeds.append(seed)
                    click.echo(
                        "  selection-bias gap Δ vs S1: "
                        + "  ".join(f"{n} {r['delta']:+.3f}" for n, r in row.items())
                    )
                except InputError as e:  # e.g. no tail-target retrieval query
                    skipped["selection_bias"] = str(e)
                    click.echo(f"  skipped selection_bias: {e}")
            if ab is not None:
                row = stages.timed("abtest", lambda c=c: ab.run_seed(layout, seed, c, vectors))
                ab_per_seed.append(row)
                line = "  A/B CTR " + "  ".join(f"{n} {r['ctr']:.4f}" for n, r in row.items())
                if "lift_vs_S2" in row.get("S1+S2+D", {}):
                    line += f"  (S1+S2+D vs S2 {row['S1+S2+D']['lift_vs_S2']:+.1%})"
                if any("rpm" in r for r in row.values()):
                    line += "\n  A/B RPM " + "  ".join(
                        f"{n} {r['rpm']:.2f}" for n, r in row.items() if "rpm" in r
                    )
                    if "rpm_lift_vs_S2" in row.get("S1+S2+D", {}):
                        line += f"  (S1+S2+D vs S2 {row['S1+S2+D']['rpm_lift_vs_S2']:+.1%})"
                click.echo(line)
            if estimates is not None:
                row = stages.timed("ope", lambda c=c: estimates.run_seed(layout, seed, c))
                ope_per_seed.append(row)
                click.echo(f"  OPE CTR ({headline(row)})")

    timings = stages.timings
    timings["total"] = time.perf_counter() - t_start
    results = {
        "preset": cfg.preset,
        "seeds": cfg.seeds,
        "world_seed": cfg.seed,
        "training_seeds": [cfg.seed + i for i in range(cfg.seeds)],
        "ctr_seeds": cfg.ctr_seeds,
        # what each entry of a per_seed list is: [encoder seed, CTR seed index]
        "replicates": replicates,
        "methods": {m: {k: aggregate(per_seed[m][k]) for k in METRICS} for m in METHODS},
        # analysis beside the metrics: what the random-exposure AUC is made of
        "random_exposure_by_category": {
            m: {k: aggregate(per_seed[m][k]) for k in BY_CATEGORY} for m in METHODS
        }
        if "random_exposure_by_category" not in skipped
        else {},
        "world": world.meta["summary"],
        "world_source": world.source,
        "world_dir": str(Path(world_dir).resolve()) if world_dir is not None else None,
        "retrieval_targets": retrieval_targets,
        "skipped": skipped,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    if ab is not None:
        from visctr.pipeline.abtest import aggregate_ab

        results["ab_test"] = aggregate_ab(ab_per_seed, ab)
    if estimates is not None:
        from visctr.pipeline.ope import aggregate_ope, validation

        results["ope"] = aggregate_ope(ope_per_seed)
        results["ope_info"] = estimates.info()
        if "ab_test" in results:
            results["ope_validation"] = validation(results["ope"], results["ab_test"])
            rpm = validation(results["ope"], results["ab_test"], "rpm")
            if rpm:
                results["ope_validation_rpm"] = rpm
    results["representation_bias"] = aggregate_bias(bias_rows)
    results["selection_bias"] = (
        aggregate_selection(selection, selection_seeds) if "selection_bias" not in skipped else {}
    )
    results["ctr_head_tail"] = (
        aggregate_ctr_head_tail(head_tail, head_tail_seeds)
        if "ctr_head_tail" not in skipped
        else {}
    )
    results["comparisons"] = comparisons(results)
    from visctr.pipeline.abtest import provenance

    # what the A/B test and OPE read, so that a later 'visctr abtest' sees a change
    results["provenance"] = provenance(layout, world, results["training_seeds"], cfg.ctr_seeds)
    write_json(results, layout.results)
    write_report(layout, results, world, tops, curves, cfg, descriptions(cfg))
    click.echo(format_table(results))
    click.echo(f"results: {layout.results}  report: {layout.report}  ({timings['total']:.0f}s)")
    return results


def skipped_metrics(world, cfg: Any = None) -> dict[str, str]:
    """What this world cannot measure, and why (one line each)."""
    out = {}
    if not world.has_random_exposure:
        out["auc_random_exposure"] = "the world has no random-exposure log (import --random)"
        out["ope_bucket"] = (
            "the off-policy estimators ips, snips, pi, dm, dr and dr_pi need a random-exposure "
            "log (import --random); results.json['ope'] has dm_log, dr_log and dr_pi_log from "
            "the ordinary log, biased as far as its propensities are wrong"
        )
    if not world.has_random_exposure:
        out["ctr_head_tail"] = (
            "the CTR head/tail table needs a random-exposure log (import --random)"
        )
    if not world.has_retrieval_labels:
        out["selection_bias"] = (
            "the selection-bias gap needs labelled retrieval queries, each with its target "
            "(import --retrieval)"
        )
    if cfg is not None and not cfg.ope.enabled:
        out["ope"] = "ope.enabled is false in the config"
    if not world.ground_truth:
        out["random_exposure_by_category"] = (
            "needs every query's true target item, which only a simulated world knows"
        )
        out["ab_test"] = "needs the simulator's hidden click model; an imported world has none" + (
            "; results.json['ope'] estimates each policy's CTR from the logs"
            + ("" if world.has_random_exposure else " (without a random-exposure log: biased)")
        )
    return out


def _ctr_head_tail(stages, layout, world, cfg, seed: int, c: int, ctr_seed: int) -> dict | str:
    """Train the item-id CTR model of encoder seed ``seed`` and CTR seed ``c`` (a stage),
    then the CTR head/tail rows of every method; a string says why there are none."""
    from visctr.ctr import train_ctr
    from visctr.ctr import training as ctr_stage
    from visctr.errors import InputError
    from visctr.pipeline.bias import CTR_REFERENCE, ITEM_ID_SLUG, item_id_config

    emb_dir = layout.embeddings(seed, METHODS[CTR_REFERENCE].encoder)
    icfg = item_id_config(cfg.ctr)
    stages.run(
        layout.ctr(seed, ITEM_ID_SLUG, c),
        ctr_stage.run_key(world, emb_dir, icfg, ctr_seed, None),
        lambda d: train_ctr(world, emb_dir, d, icfg, ctr_seed),
        f"ctr {ITEM_ID_SLUG}" + (f" (ctr seed {c})" if c else ""),
        ctr_stage.OUTPUTS,
    )
    try:
        return stages.timed(
            "ctr_head_tail", lambda: ctr_head_tail_rows(layout, world, seed, c, ctr_seed)
        )
    except InputError as e:  # e.g. no head item among the random-exposure impressions
        return str(e)


def world_key(cfg: Any) -> dict:
    """The world stage's key: simulator config, seed and the catalog's *content* digest (an
    edited catalog makes a new world even under the same path)."""
    from visctr.data.catalog import catalog_fingerprint

    return {
        "world": to_dict(cfg.world),
        "seed": cfg.seed,
        "catalog": catalog_fingerprint(cfg.world.catalog),
    }


def _train_encoder(recipe, world, cfg, out_dir: Path, seed: int, init: Path | None) -> Path:
    from visctr.pipeline.methods import STAGES

    return STAGES[recipe.stage].train(world, recipe.config(cfg), out_dir, seed, init)


def _read_history(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


__all__ = ["BY_CATEGORY", "METHODS", "METRICS", "run_pipeline"]
