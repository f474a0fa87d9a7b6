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
    # auto: bf16-mixed for encoder stages on CPUs with native bf16, else 32-true (see
    # visctr.precision); 32 | 32-true | bf16-mixed | 16-mixed force one
    precision: str = "auto"
    num_threads: int | None = None  # torch intra-op threads on CPU (None: leave as is)
    deterministic: bool = True
    # periodic checkpoint for resume after a crash; 0 = at the end of every epoch instead
    checkpoint_every_n_steps: int = 200
    progress_bar: bool = True


def is_global_zero() -> bool:
    """True in the process that writes reports (rank 0, or the only process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0


def resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The periodic checkpoint a killed run left behind, if any."""
    p = Path(out_dir) / "checkpoints" / "last.ckpt"
    return p if p.is_file() else None


def _last_checkpoint_callback():
    from lightning.pytorch.callbacks import Checkpoint

    # A Checkpoint subclass runs after the module's and the other callbacks' epoch-end
    # hooks, so the saved state includes what they recorded for the epoch.
    class LastCheckpoint(Checkpoint):
        """Keep one resumable checkpoint, ``last.ckpt``, written atomically.

        Saved every ``every_n_steps`` optimizer steps, or at the end of every epoch when
        ``every_n_steps`` is 0. The file is written beside its final name and renamed into
        place, so a kill mid-write leaves the previous checkpoint intact.
        """

        def __init__(self, path: Path, every_n_steps: int):
            self.path = Path(path)
            self.every_n_steps = int(every_n_steps)
            self._saved_at = 0

        def _save(self, trainer) -> None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
            trainer.strategy.barrier("last_checkpoint")

        def on_train_batch_end(self, trainer, *args) -> None:
            # global_step may advance by several per batch (manual optimisation with
            # several optimiser steps per training_step): save on crossing a multiple
            n, step = self.every_n_steps, trainer.global_step
            if n and step // n > self._saved_at // n:
                self._save(trainer)
                self._saved_at = step

        def on_train_start(self, trainer, *args) -> None:
            self._saved_at = trainer.global_step  # resumed runs start from their step

        def on_train_epoch_end(self, trainer, *args) -> None:
            if not self.every_n_steps:
                self._save(trainer)

    return LastCheckpoint


def build_trainer(
    cfg: TrainerConfig,
    out_dir: str | Path,
    max_epochs: int,
    callbacks: list[Any] | None = None,
    bf16_ok: bool = False,
    **kwargs: Any,
):
    """A Lightning Trainer that checkpoints periodically to ``out_dir/checkpoints/last.ckpt``.

    ``bf16_ok``: an encoder stage, where ``precision: auto`` may pick bf16 on the CPU."""
    import logging

    import lightning as L
    import torch

    from visctr.precision import resolve_precision

    # Lightning's banner lines (GPU available, tips) are noise in a multi-stage run.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    # Deterministic mode also fills every new tensor with NaN (a debugging aid); that
    # halves CPU throughput and is not needed for reproducible results.
    torch.utils.deterministic.fill_uninitialized_memory = False
    out_dir = Path(out_dir)
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt = _last_checkpoint_callback()(last, cfg.checkpoint_every_n_steps)
    env_quiet = os.environ.get("VISCTR_QUIET") == "1"
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg.precision, cfg.accelerator, bf16_ok),
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
