"""``visctr export`` and ``visctr search``."""

from __future__ import annotations

from pathlib import Path

import click

from visctr.cli_common import NON_NEGATIVE, check_out, handle_errors, path_option


@click.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["serving", "fuxictr"]),
    default="serving",
    show_default=True,
    help="serving: encoder + index for search; fuxictr: the embeddings as FuxiCTR "
    "pretrained_emb files (key, value), no encoder needed.",
)
@path_option("--encoder", help="encoder.pt from pretrain/finetune/classify (--format serving).")
@path_option(
    "--embeddings",
    required=True,
    help="That encoder's `visctr embed` folder (items.parquet is indexed).",
)
@path_option(
    "--debias", help="debias.pt from `train-ctr --debias`: exported and applied to vectors."
)
@click.option(
    "--index", "kind", type=click.Choice(["flat", "ivf", "hnsw"]), default="hnsw", show_default=True
)
@click.option("--nlist", type=NON_NEGATIVE, default=0, help="IVF lists (0: about 4·sqrt(items)).")
@click.option(
    "--onnx",
    is_flag=True,
    help="Also write encoder.onnx (float32 images in [0, 1]) and debias.onnx; needs the "
    "onnx extra.",
)
@path_option("--out", required=True)
@handle_errors
def export(
    fmt: str,
    encoder: Path | None,
    embeddings: Path,
    debias: Path | None,
    kind: str,
    nlist: int,
    onnx: bool,
    out: Path,
) -> None:
    """Serving artifacts (TorchScript/ONNX encoder and debias network, a FAISS index), or
    the embeddings in FuxiCTR's pretrained_emb layout."""
    import json

    from visctr.serve.export import IndexConfig, export_artifacts

    if fmt == "fuxictr":
        from visctr.serve.fuxictr import export_fuxictr

        for name, given in (("--encoder", encoder), ("--debias", debias), ("--onnx", onnx)):
            if given:
                raise click.UsageError(f"{name} is for --format serving, not fuxictr")
        check_out(out, "export", embeddings)
        for name, (rows, dim) in export_fuxictr(embeddings, out).items():
            click.echo(f"{out / name}: {rows} keys, pretrain_dim {dim}")
        return
    if encoder is None:
        raise click.UsageError("--format serving needs --encoder (the encoder.pt to serve)")
    check_out(out, "export", encoder, embeddings, debias)
    from visctr.embeddings import unknown_origin

    export_artifacts(encoder, embeddings, out, IndexConfig(kind=kind, nlist=nlist), debias, onnx)
    warning = unknown_origin(embeddings, f"{encoder}; they were exported as they are")
    if warning:
        click.echo(warning, err=True)
    files = json.loads((out / "export.json").read_text())["files"]
    click.echo(f"exported {', '.join(files)}, index.faiss ({kind}) to {out}")


@click.command("search")
@path_option("--export", "export_dir", required=True, help="A `visctr export` folder.")
@path_option("--image", required=True, help="Query photo.")
@click.option("--top-k", type=click.IntRange(1, 10_000), default=10, show_default=True)
@handle_errors
def search(export_dir: Path, image: Path, top_k: int) -> None:
    """Top-K catalog items for a photo (item_id and cosine score)."""
    from visctr.serve.export import search_image

    for rank, (item_id, score) in enumerate(search_image(export_dir, image, top_k), 1):
        click.echo(f"{rank:3d}  item {item_id}  score {score:.4f}")


COMMANDS = [export, search]
