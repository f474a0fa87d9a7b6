"""``visctr evaluate``: retrieval (and optionally CTR) metrics of one method; ``visctr
train-ctr``: train one CTR model and print its test metrics.

train-ctr is here, one layer above ``visctr.ctr``, because it evaluates the model it trains
(``visctr.eval.ctr``); the training itself is ``visctr.ctr.train_ctr``."""

from __future__ import annotations

import math
from pathlib import Path

import click

from visctr.cli_common import (
    SEED,
    check_out,
    handle_errors,
    path_option,
    preset_option,
    trainer_options,
)


@click.command("evaluate")
@path_option("--world", "world_dir", required=True)
@path_option(
    "--embeddings",
    required=True,
    help="Folder with items.parquet and queries.parquet (from `visctr embed`).",
)
@path_option(
    "--ctr-model",
    help="A `visctr train-ctr` output folder: adds AUC, logloss, gAUC, "
    "random-exposure AUC and tail AUC.",
)
@path_option(
    "--debias", help="A debias.pt: map query and item vectors through it before retrieval."
)
@path_option("--out", help="Write the metrics as JSON here.")
@handle_errors
def evaluate(
    world_dir: Path, embeddings: Path, ctr_model: Path | None, debias: Path | None, out: Path | None
) -> None:
    """Retrieval HR@1/10/50, long-tail/head HR@10, category recall@10 (+ CTR metrics)."""
    from visctr.eval.retrieval import evaluate_retrieval
    from visctr.io import write_json
    from visctr.world import World

    if out is not None:
        check_out(out, "file", world_dir, embeddings, ctr_model, debias)
    world = World.load(world_dir)
    transform = None
    if debias is not None:
        from visctr.s3.artifact import debias_transform

        transform = debias_transform(debias)
        transform.check_embeddings(embeddings)
    metrics, _ = evaluate_retrieval(world, embeddings, transform)
    from visctr.embeddings import unknown_origin

    warning = unknown_origin(
        embeddings,
        " or ".join(str(p) for p in (ctr_model, debias) if p is not None)
        or "the encoder that should have made them",
    )
    if warning:
        click.echo(warning, err=True)
    if ctr_model is not None:
        from visctr.eval.ctr import evaluate_ctr

        metrics.update(evaluate_ctr(ctr_model, world, embeddings))
    for k, v in metrics.items():
        click.echo(f"{k:22s} {v:.4f}")
    if not world.has_retrieval_labels:
        click.echo("retrieval HR: targets are the clicked items of test queries (no labels)")
    if ctr_model is not None and not world.has_random_exposure:
        click.echo("auc_random_exposure skipped: the world has no random-exposure log")
    if out is not None:
        write_json(metrics, out)
        click.echo(f"written to {out}")


def ctr_config(
    preset: str,
    config_file: Path | None = None,
    trainer_overrides: dict | None = None,
    debias: bool | None = None,
    compile_: bool | None = None,
):
    """train-ctr's config as ``visctr run`` resolves its ``ctr`` section: the defaults, the
    preset's ``ctr``, the file's (a CTR config or a run config's ``ctr`` with its
    ``trainer``), then the flags."""
    from visctr.config import from_dict, merge, read_yaml, stage_section
    from visctr.ctr import CTRConfig
    from visctr.presets import preset_section

    data = preset_section(preset, "ctr")
    if config_file:
        file_data = stage_section(read_yaml(config_file), "ctr", config_file)
        from_dict(CTRConfig, file_data, where=str(config_file))  # its errors name the file
        data = merge(data, file_data)
    if trainer_overrides:
        data = merge(data, {"trainer": trainer_overrides})
    if debias is not None:
        data = merge(data, {"debias": {"enabled": debias}})
    if compile_ is not None:
        data = merge(data, {"compile": compile_})
    where = f"{config_file} + command line" if config_file else "config"
    return from_dict(CTRConfig, data, where=where)


@click.command("train-ctr")
@path_option(
    "--world", "world_dir", required=True, help="World directory written by 'visctr simulate'."
)
@path_option(
    "--embeddings",
    required=True,
    help="Embeddings directory (items.parquet, queries.parquet) of one encoder.",
)
@path_option(
    "--reference", help="S1 embeddings directory: the unbiased reference (needed for --debias)."
)
@click.option(
    "--debias/--no-debias",
    default=None,
    help="S3 debias network + gate (default: the config's debias.enabled).",
)
@click.option(
    "--compile/--no-compile",
    "compile_",
    default=None,
    help="torch.compile the training step (default: the config's compile, off); pays off "
    "on logs of millions of rows, needs a C++ compiler on CPU.",
)
@path_option(
    "--out",
    "out_dir",
    required=True,
    help="Output directory for model.pt, feature_map.json, history.json, ...",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@path_option(
    "--config",
    "config_file",
    help="YAML file with CTRConfig keys, or a run config (visctr run --config, a run's "
    "config.yaml, visctr config show): its ctr section is used (strict: unknown keys are "
    "errors).",
)
@preset_option("The CTR budget of 'visctr run --preset' (the config file and flags override it).")
@trainer_options
@handle_errors
def train_ctr_cmd(
    world_dir: Path,
    embeddings: Path,
    reference: Path | None,
    debias: bool | None,
    compile_: bool | None,
    out_dir: Path,
    seed: int,
    config_file: Path | None,
    preset: str,
    trainer_overrides: dict,
) -> None:
    """Train a CTR model (optionally with S3 debiasing) and print its test metrics."""
    from visctr.ctr import train_ctr
    from visctr.eval.ctr import evaluate_ctr
    from visctr.train import check_logger, is_global_zero
    from visctr.world import World

    check_out(out_dir, "ctr", world_dir, embeddings, reference, config_file)
    cfg = ctr_config(preset, config_file, trainer_overrides, debias, compile_)
    check_logger(cfg.trainer.logger)  # before anything is written
    world = World.load(world_dir)
    train_ctr(world, embeddings, out_dir, cfg, seed, reference=reference)
    from visctr.embeddings import unknown_origin

    warning = unknown_origin(embeddings, "later ones (the model will not know its encoder)")
    if warning and is_global_zero():
        click.echo(warning, err=True)
    if not is_global_zero():
        return  # under DDP, rank 0 writes the model and evaluates it
    from visctr.stagedir import finished

    record = finished(out_dir)
    done = {**record["summary"], "seconds": record["seconds"]}
    metrics = evaluate_ctr(out_dir, world, embeddings)
    best = "n/a" if done["best_val_auc"] is None else f"{done['best_val_auc']:.4f}"
    click.echo(
        f"train-ctr: {out_dir} (debias={'on' if cfg.debias.enabled else 'off'}, "
        f"seed={seed}, epochs={done['epochs']}, best val AUC={best}, "
        f"{done['seconds']}s)"
    )
    click.echo(
        "  ".join(f"{k}={v:.4f}" if math.isfinite(v) else f"{k}=nan" for k, v in metrics.items())
    )


COMMANDS = [train_ctr_cmd, evaluate]
