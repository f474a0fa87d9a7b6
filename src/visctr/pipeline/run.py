"""``visctr run``: world → five methods → evaluation → ``results.json`` + ``report.md``.

Each stage writes into its own folder with a ``done.json`` completion marker holding the
hash of the config it ran with; a rerun skips every stage whose marker matches, so a
killed run resumes where it stopped and a config change recomputes only what it touches.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from visctr.config import config_hash, dump_yaml, to_dict
from visctr.io import write_json, write_text

METHODS = ("ResNet-C", "S1", "S2", "S1+S2", "S1+S2+D")
METHOD_DIRS = {
    "ResNet-C": "resnet_c",
    "S1": "s1",
    "S2": "s2",
    "S1+S2": "s1_s2",
    "S1+S2+D": "s1_s2_d",
}
METRICS = (
    "hr@1",
    "hr@10",
    "hr@50",
    "longtail_hr@10",
    "head_hr@10",
    "category_recall@10",
    "auc",
    "logloss",
    "gauc",
    "auc_random_exposure",
    "auc_tail",
)
BY_CATEGORY = (
    "auc_random_same_category",
    "auc_random_other_category",
    "random_same_category_share",
    "random_same_category_click_share",
)
METHOD_DESCRIPTIONS = {
    "ResNet-C": "encoder trained on category labels (cross-entropy); plain CTR model",
    "S1": "S1 self-supervised pre-training only (InfoNCE on all catalog images); plain CTR model",
    "S2": "S2 click-contrastive fine-tuning from random init, clicks only (λ=0); plain CTR model",
    "S1+S2": "S1, then S2 with the λ·L_S1 term over the catalog; plain CTR model",
    "S1+S2+D": "the S1+S2 encoder; CTR model with the S3 debias network + gate "
    "(triplets from S1 neighbours); retrieval through the debias network",
}


def _done(stage_dir: Path, key: str) -> bool:
    marker = stage_dir / "stage.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def run_stage(
    stage_dir: Path,
    key_obj: Any,
    fn: Callable[[Path], Any],
    label: str,
    timings: dict[str, float],
    restart: bool = False,
) -> bool:
    """Run ``fn(stage_dir)`` unless ``stage_dir`` is complete for the same key. True if ran."""
    key = config_hash(key_obj)
    if restart and stage_dir.exists():
        shutil.rmtree(stage_dir)
    if _done(stage_dir, key):
        click.echo(f"  {label}: cached ({stage_dir})")
        return False
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "stage.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    fn(stage_dir)
    dt = time.perf_counter() - t0
    timings[label] = timings.get(label, 0.0) + dt
    write_json({"key": key, "seconds": round(dt, 2)}, stage_dir / "stage.json")
    click.echo(f"  {label}: done in {dt:.1f}s")
    return True


def _agg(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if len(finite) else None,
        "std": float(finite.std(ddof=1)) if len(finite) > 1 else (0.0 if len(finite) else None),
        "per_seed": [None if not math.isfinite(v) else float(v) for v in arr],
    }


def run_pipeline(cfg: Any, out: Path, restart: bool = False) -> dict:
    """Run everything for ``cfg.seeds`` training seeds; returns the results dict."""
    from visctr.ctr import debias_transform, train_ctr
    from visctr.ctr.training import MODEL_FORMAT
    from visctr.encoders import classify, embed, finetune, pretrain
    from visctr.eval.ctr import evaluate_ctr
    from visctr.eval.retrieval import evaluate_retrieval
    from visctr.world import World
    from visctr.world.simulate import format_summary, simulate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(dump_yaml(cfg), out / "config.yaml")
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    click.echo(f"[world] preset={cfg.preset} seed={cfg.seed}")
    world_dir = out / "world"
    world_key = {"world": to_dict(cfg.world), "seed": cfg.seed}
    run_stage(
        world_dir,
        world_key,
        lambda d: simulate(cfg.world, cfg.seed, d / "data"),
        "world",
        timings,
        restart,
    )
    world = World.load(world_dir / "data")
    click.echo("  " + format_summary(world.meta["summary"]).replace("\n", "\n  "))

    keys = METRICS + BY_CATEGORY
    per_seed: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in METHODS}
    tops: dict[str, np.ndarray] = {}
    curves: dict[str, dict] = {}
    for i in range(cfg.seeds):
        seed = cfg.seed + i
        sd = out / f"seed_{seed}"
        click.echo(f"[seed {seed}] ({i + 1}/{cfg.seeds})")
        enc = sd / "encoders"
        emb = sd / "embeddings"
        wk = config_hash(world_key)

        def train_enc(name: str, fn: Callable[[Path], Any], key: Any) -> Path:
            run_stage(
                enc / name,
                {"world": wk, "seed": seed, "cfg": key},
                fn,
                f"encoder {name}",
                timings,
                restart,
            )
            return enc / name / "encoder.pt"

        import dataclasses

        s2_plain = dataclasses.replace(cfg.s2, lambda_s1=0.0)
        rc = train_enc(
            "resnet_c", lambda d: classify(world, cfg.classify, d, seed), to_dict(cfg.classify)
        )
        s1 = train_enc("s1", lambda d: pretrain(world, cfg.s1, d, seed), to_dict(cfg.s1))
        s2 = train_enc(
            "s2", lambda d: finetune(world, s2_plain, d, seed, init=None), to_dict(s2_plain)
        )
        s12 = train_enc(
            "s1_s2",
            lambda d: finetune(world, cfg.s2, d, seed, init=s1),
            {"s2": to_dict(cfg.s2), "s1": to_dict(cfg.s1)},
        )
        enc_paths = {"ResNet-C": rc, "S1": s1, "S2": s2, "S1+S2": s12}
        for method, path in enc_paths.items():
            name = METHOD_DIRS[method]
            run_stage(
                emb / name,
                {"encoder": str(path), "stamp": path.stat().st_mtime_ns},
                lambda d, p=path: embed(p, world, d),
                f"embed {name}",
                timings,
                restart,
            )
            curves.setdefault(method, {})[seed] = _read_history(path.parent / "history.json")

        ctr_dir = sd / "ctr"
        for method in METHODS:
            name = METHOD_DIRS[method]
            debias = method == "S1+S2+D"
            emb_dir = emb / ("s1_s2" if debias else name)
            ccfg = dataclasses.replace(
                cfg.ctr, debias=dataclasses.replace(cfg.ctr.debias, enabled=debias)
            )
            run_stage(
                ctr_dir / name,
                {
                    "cfg": to_dict(ccfg),
                    "emb": (emb_dir / "stage.json").read_text(),
                    "seed": seed,
                    "format": MODEL_FORMAT,  # a new model format retrains, never fails to load
                },
                lambda d, e=emb_dir, c=ccfg, r=(emb / "s1") if debias else None: train_ctr(
                    world, e, d, c, seed, reference=r
                ),
                f"ctr {name}",
                timings,
                restart,
            )
            t0 = time.perf_counter()
            ctr_m = evaluate_ctr(ctr_dir / name, world, emb_dir, by_category=True)
            transform = debias_transform(ctr_dir / name / "debias.pt") if debias else None
            ret_m, top = evaluate_retrieval(world, emb_dir, transform)
            timings["evaluate"] = timings.get("evaluate", 0.0) + time.perf_counter() - t0
            if i == 0:
                tops[method] = top
            m = {**ret_m, **ctr_m}
            for k in keys:
                per_seed[method][k].append(float(m[k]))
            click.echo(
                f"  {method:8s} HR@10 {m['hr@10']:.3f}  tail HR@10 "
                f"{m['longtail_hr@10']:.3f}  AUC {m['auc']:.3f}  AUC(random) "
                f"{m['auc_random_exposure']:.3f}"
            )

    timings["total"] = time.perf_counter() - t_start
    results = {
        "preset": cfg.preset,
        "seeds": cfg.seeds,
        "world_seed": cfg.seed,
        "training_seeds": [cfg.seed + i for i in range(cfg.seeds)],
        "methods": {m: {k: _agg(per_seed[m][k]) for k in METRICS} for m in METHODS},
        # analysis beside the metrics: what the random-exposure AUC is made of
        "random_exposure_by_category": {
            m: {k: _agg(per_seed[m][k]) for k in BY_CATEGORY} for m in METHODS
        },
        "world": world.meta["summary"],
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    write_json(results, out / "results.json")
    from visctr.pipeline.report import write_report

    write_report(out, results, world, tops, curves, cfg)
    click.echo(format_table(results))
    click.echo(
        f"results: {out / 'results.json'}  report: {out / 'report.md'}  ({timings['total']:.0f}s)"
    )
    return results


def _read_history(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def fmt(entry: dict, digits: int = 3) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


TABLE_METRICS = (
    "hr@10",
    "longtail_hr@10",
    "head_hr@10",
    "category_recall@10",
    "auc",
    "auc_random_exposure",
    "auc_tail",
    "gauc",
    "logloss",
)


def format_table(results: dict, markdown: bool = False) -> str:
    head = ["method", *TABLE_METRICS]
    rows = [[m, *(fmt(results["methods"][m][k]) for k in TABLE_METRICS)] for m in METHODS]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    )
