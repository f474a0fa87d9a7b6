"""``visctr evaluate``: retrieval (and optionally CTR) metrics of one method."""

from __future__ import annotations

from pathlib import Path

import click

from visctr.cli_common import check_out, handle_errors


@click.command("evaluate")
@click.option("--world", "world_dir", type=click.Path(path_type=Path), required=True)
@click.option(
    "--embeddings",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder with items.parquet and queries.parquet (from `visctr embed`).",
)
@click.option(
    "--ctr-model",
    type=click.Path(path_type=Path),
    default=None,
    help="A `visctr train-ctr` output folder: adds AUC, logloss, gAUC, "
    "random-exposure AUC and tail AUC.",
)
@click.option(
    "--debias",
    type=click.Path(path_type=Path),
    default=None,
    help="A debias.pt: map query and item vectors through it before retrieval.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write the metrics as JSON here."
)
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


COMMANDS = [evaluate]
