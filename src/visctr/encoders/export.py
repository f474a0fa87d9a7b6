"""Embedding export: every catalog item and every query photo through a trained encoder.

Writes ``items.parquet`` (``item_id`` int64, ``vector`` fixed_size_list<float32>[D]) and
``queries.parquet`` (``query_id`` int64, ``vector``), L2-normalised, streamed in row
groups (``visctr.embeddings.write_embeddings``); the pair is written in a temporary
directory renamed into place whole (an ``embeddings`` artifact directory,
:func:`visctr.io.atomic_dir`). A plain ``inference_mode`` loop, no Lightning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visctr.embeddings import ROW_GROUP, write_embeddings
from visctr.encoders.backbones import Encoder
from visctr.encoders.checkpoint import load_encoder
from visctr.errors import InputError
from visctr.io import atomic_dir, check_out_dir
from visctr.precision import resolve_precision
from visctr.world.store import World


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"device {device!r}: no CUDA device here; use cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device {device!r}: only {n} CUDA device(s) here (cuda:0..{n - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available here; use cpu or auto")
    return dev


@torch.inference_mode()
def embed_images(
    encoder: Encoder,
    images: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
):
    """Yield L2-normalised float32 embeddings ``[n, D]`` of ``images[rows]`` chunk by chunk.

    ``bf16``: the encoder runs under bf16 autocast; normalisation stays in fp32."""
    chunk = max(batch_size, (ROW_GROUP // batch_size) * batch_size)
    for start in range(0, len(rows), chunk):
        block = torch.from_numpy(np.ascontiguousarray(images[rows[start : start + chunk]]))
        out = torch.empty(len(block), encoder.embed_dim, dtype=torch.float32)
        for s in range(0, len(block), batch_size):
            x = block[s : s + batch_size].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                z = encoder(x)
            out[s : s + len(x)] = F.normalize(z.float(), dim=1).cpu()
        yield out.numpy()


def _finite(chunks, path: Path):
    """Pass ``chunks`` through, raising on the first non-finite embedding."""
    for vec in chunks:
        if not np.isfinite(vec).all():
            raise InputError(f"{path}: the encoder produced non-finite embeddings")
        yield vec


def embed(
    encoder_path: Path,
    world: World,
    out_dir: Path,
    batch_size: int = 1024,
    device: str = "auto",
    backbone: nn.Module | None = None,
    precision: str = "auto",
) -> tuple[Path, Path]:
    """Embed all items and all query photos of ``world``; returns (items, queries) paths.

    ``precision``: ``auto`` runs the encoder under bf16 autocast on CPUs with native bf16
    (``visctr.precision``), ``32`` forces fp32, ``bf16-mixed`` forces bf16."""
    encoder_path, out_dir = Path(encoder_path), Path(out_dir)
    if not encoder_path.is_file():
        raise InputError(
            f"{encoder_path}: encoder file not found (train one with "
            "'visctr pretrain|finetune|classify')"
        )
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    check_out_dir(out_dir, "embeddings", (encoder_path, world.root))
    dev = _device(device)
    try:
        bf16 = resolve_precision(precision, dev.type, bf16_ok=True) == "bf16-mixed"
    except ValueError as e:
        raise InputError(f"embed: {e}") from None
    encoder = load_encoder(encoder_path, backbone).to(dev)
    items_path, queries_path = out_dir / "items.parquet", out_dir / "queries.parquet"
    items, queries = world.items, world.queries
    with atomic_dir(out_dir, kind="embeddings") as tmp:  # the pair appears together
        item_vecs = embed_images(
            encoder, world.item_images, items["image_row"], batch_size, dev, bf16
        )
        write_embeddings(
            items["item_id"],
            _finite(item_vecs, items_path),
            tmp / items_path.name,
            "item_id",
            keys=items.get("item_key"),
        )
        query_vecs = embed_images(
            encoder, world.query_images, queries["image_row"], batch_size, dev, bf16
        )
        write_embeddings(
            queries["query_id"],
            _finite(query_vecs, queries_path),
            tmp / queries_path.name,
            "query_id",
            keys=queries.get("query_key"),
        )
    return items_path, queries_path
