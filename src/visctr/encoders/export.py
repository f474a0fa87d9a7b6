"""Embedding export: every catalog item and every query photo through a trained encoder.

Writes ``items.parquet`` (``item_id`` int64, ``vector`` fixed_size_list<float32>[D]) and
``queries.parquet`` (``query_id`` int64, ``vector``), L2-normalised, streamed in row
groups (``visctr.embeddings.write_embeddings``), with the encoder, its digest, the
normalisation and the precision as schema metadata; the pair is written in a temporary
directory renamed into place whole (an ``embeddings`` artifact directory,
:func:`visctr.io.atomic_dir`). A plain ``inference_mode`` loop, no Lightning. fp32 unless
bf16 is asked for, so the vectors equal what the exported fp32 encoder gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visctr.embeddings import ROW_GROUP, write_embeddings
from visctr.encoders.backbones import Encoder
from visctr.encoders.checkpoint import encoder_from_file, read_encoder_file
from visctr.errors import InputError
from visctr.io import atomic_dir, check_out_dir, file_digest
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

    ``precision``: ``auto`` and ``32`` run the encoder in fp32 (the vectors then equal the
    exported encoder's to float rounding); ``bf16-mixed`` runs it under bf16 autocast,
    which moves vectors by ~3e-3 and is recorded in the files."""
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
        resolved = resolve_precision(precision, dev.type, bf16_ok=False)
    except ValueError as e:
        raise InputError(f"embed: {e}") from None
    if resolved not in ("32-true", "bf16-mixed"):
        raise InputError(f"embed: precision must be auto, 32 or bf16-mixed, got {precision!r}")
    bf16 = resolved == "bf16-mixed"
    obj = read_encoder_file(encoder_path)
    encoder = encoder_from_file(obj, encoder_path, backbone).eval().to(dev)
    spec, info = obj["config"], obj["meta"]
    meta = {
        "encoder": json.dumps(
            {
                "file": encoder_path.name,
                "backbone": spec["backbone"],
                "stage": info.get("stage"),
                "seed": info.get("seed"),
                "image_size": spec["image_size"],
                "channels": spec["in_channels"],
            }
        ),
        "encoder_digest": file_digest(encoder_path),
        "normalisation": "l2",
        "precision": resolved,
        "dim": str(encoder.embed_dim),
    }
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
            meta=meta,
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
            meta=meta,
        )
    return items_path, queries_path
