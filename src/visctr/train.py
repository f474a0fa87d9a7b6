"""Shared Lightning trainer settings: every training stage (S1, S2, ResNet-C, CTR) uses these.

DDP multi-GPU and multi-node (torchrun / SLURM) come from Lightning: set ``devices``,
``num_nodes``, ``strategy`` and ``precision``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainerConfig:
    """Hardware and engine settings shared by all training stages."""

    accelerator: str = "auto"  # cpu | gpu | auto
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    num_threads: int | None = None  # torch intra-op threads on CPU (None: leave as is)
    deterministic: bool = True
    # periodic checkpoint for resume after a crash; 0 = at the end of every epoch instead
    checkpoint_every_n_steps: int = 200
    progress_bar: bool = True


def resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The periodic checkpoint a killed run left behind, if any."""
    p = Path(out_dir) / "checkpoints" / "last.ckpt"
    return p if p.is_file() else None


def build_trainer(
    cfg: TrainerConfig,
    out_dir: str | Path,
    max_epochs: int,
    callbacks: list[Any] | None = None,
    **kwargs: Any,
):
    """A Lightning Trainer that checkpoints periodically to ``out_dir/checkpoints/last.ckpt``."""
    import logging

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    # Lightning's banner lines (GPU available, tips) are noise in a multi-stage run.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(out_dir)
    ckpt = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every_n_steps or None,
        every_n_epochs=None if cfg.checkpoint_every_n_steps else 1,
        save_on_train_epoch_end=True,
    )
    env_quiet = os.environ.get("VISCTR_QUIET") == "1"
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=max_epochs,
        deterministic=cfg.deterministic,
        default_root_dir=str(out_dir),
        callbacks=[ckpt, *(callbacks or [])],
        enable_progress_bar=cfg.progress_bar and not env_quiet,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
        **kwargs,
    )
