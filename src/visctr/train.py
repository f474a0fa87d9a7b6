"""Shared Lightning trainer settings: every training stage (S1, S2, ResNet-C, CTR) uses these.

DDP multi-GPU and multi-node (torchrun / SLURM) come from Lightning: set ``devices``,
``num_nodes``, ``strategy`` and ``precision``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visctr.errors import Interrupted
from visctr.precision import PRECISIONS

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
_DEVICES_RE = re.compile(r"^(auto|-1|\d+|\d+(,\d+)+,?)$")


def check_devices(value: int | str) -> int | str:
    """``devices`` as Lightning takes it: a count >= 1, -1 (all), 'auto' or ids '0,1'."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"devices must be an integer or 'auto', got {value!r}")
    text = str(value).strip()
    if not _DEVICES_RE.match(text) or text == "0":
        raise ValueError(
            f"devices must be a count >= 1, -1 (all), 'auto' or device ids like '0,1'; "
            f"got {str(value)[:40]!r}"
        )
    return int(text) if text.lstrip("-").isdigit() else text


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

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ValueError(
                f"accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        self.devices = check_devices(self.devices)
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")
        if self.checkpoint_every_n_steps < 0:
            raise ValueError(
                f"checkpoint_every_n_steps must be >= 0, got {self.checkpoint_every_n_steps}"
            )
        if not isinstance(self.strategy, str) or not self.strategy.strip():
            raise ValueError("strategy must be a non-empty string such as auto or ddp")


def is_global_zero() -> bool:
    """True in the process that writes reports (rank 0, or the only process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) == 0


def _first_process() -> bool:
    """Rank 0 of the job, before and after DDP starts (Lightning's launcher sets only
    ``LOCAL_RANK`` in the processes it starts)."""
    return is_global_zero() and int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def _checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from (truncated, not a checkpoint, unsafe), or None."""
    from visctr.errors import InputError
    from visctr.io import load_torch

    try:
        ckpt = load_torch(path)
    except InputError as e:
        return str(e).removeprefix(f"{path}: ")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a Lightning checkpoint"
    return None


def resume_checkpoint(out_dir: str | Path) -> Path | None:
    """The periodic checkpoint a killed run left behind, if any and if it loads.

    Called at the start of every training stage. Sweeps the temporary files a kill left
    behind (``.NAME.XXXXXXXX.tmp``, ``checkpoints/last.ckpt.tmp``). A checkpoint that does
    not load (truncated by a full disk, damaged, or holding objects a safe load refuses)
    is moved aside to ``last.ckpt.corrupt`` with a one-line warning, and the stage starts
    afresh instead of failing on every rerun.
    """
    from visctr.io import sweep_temp

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    p = ckpt_dir / "last.ckpt"
    if _first_process():
        sweep_temp(out_dir)
        sweep_temp(ckpt_dir)
        (ckpt_dir / "last.ckpt.tmp").unlink(missing_ok=True)
    if not p.is_file():
        return None
    problem = _checkpoint_problem(p)
    if problem is None:
        return p
    if _first_process():
        aside = p.with_name("last.ckpt.corrupt")
        os.replace(p, aside)
        print(
            f"warning: {p}: cannot resume from it ({problem}); moved it to {aside.name}, "
            "starting this stage afresh",
            file=sys.stderr,
            flush=True,
        )
    return None


def _last_checkpoint_callback():
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    # A Checkpoint subclass runs after the module's and the other callbacks' epoch-end
    # hooks, so the saved state includes what they recorded for the epoch.
    class LastCheckpoint(Checkpoint):
        """Keep one resumable checkpoint, ``last.ckpt``, written atomically.

        Saved every ``every_n_steps`` optimizer steps, or at the end of every epoch when
        ``every_n_steps`` is 0, and when SIGTERM stops training (Lightning's loops stop
        at a batch or epoch boundary, so the state is whole; a Ctrl-C can land anywhere,
        so it saves nothing and the previous checkpoint stays). The file is written beside
        its final name and renamed into place, so a kill mid-write leaves the previous
        checkpoint intact.
        """

        def __init__(self, path: Path, every_n_steps: int):
            self.path = Path(path)
            self.every_n_steps = int(every_n_steps)
            self._saved_at = 0
            self.saved_step: int | None = None  # step of the checkpoint on disk, if any
            self.stopped: tuple[str, int] | None = None  # (signal, step) that stopped fit

        def _save(self, trainer) -> None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp, weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
            trainer.strategy.barrier("last_checkpoint")
            self.saved_step = trainer.global_step

        def on_train_batch_end(self, trainer, *args) -> None:
            # global_step may advance by several per batch (manual optimisation with
            # several optimiser steps per training_step): save on crossing a multiple
            n, step = self.every_n_steps, trainer.global_step
            if n and step // n > self._saved_at // n:
                self._save(trainer)
                self._saved_at = step

        def on_train_start(self, trainer, *args) -> None:
            self._saved_at = trainer.global_step  # resumed runs start from their step
            if self.path.is_file():
                self.saved_step = trainer.global_step

        def on_train_epoch_end(self, trainer, *args) -> None:
            if not self.every_n_steps:
                self._save(trainer)

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            if isinstance(exception, SIGTERMException):
                self._save(trainer)
                self.stopped = ("SIGTERM", trainer.global_step)
            elif isinstance(exception, KeyboardInterrupt):
                self.stopped = ("SIGINT", trainer.global_step)

        def stop_message(self) -> str:
            """One line: what stopped training and how to go on."""
            how, step = self.stopped or ("a signal", -1)
            if how == "SIGTERM":
                return (
                    f"stopped by SIGTERM at step {step}; saved {self.path}: rerun the same "
                    "command to resume from it"
                )
            if self.saved_step is not None and self.path.is_file():
                return (
                    f"interrupted at step {step}; rerun the same command to resume from "
                    f"{self.path} (step {self.saved_step})"
                )
            return (
                f"interrupted at step {step}, before the first checkpoint; rerun the same "
                "command to start again"
            )

    return LastCheckpoint


def _trainer_class():
    import lightning as L
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class SafeCheckpointIO(TorchCheckpointIO):
        """Resume reads checkpoints with :func:`visctr.io.load_torch`: never unpickles
        arbitrary objects, whatever the caller or the environment asks for."""

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            from visctr.io import load_torch

            return load_torch(path)

    class Trainer(L.Trainer):
        """``fit`` loads checkpoints with ``weights_only=True`` always, and a stop by
        SIGTERM or Ctrl-C raises :class:`Interrupted` (exit 143 / 130) saying how to
        resume, where Lightning would return (SIGTERM: as if training had finished, so
        the caller would write its final artifacts) or exit 1 without a word."""

        last_checkpoint: Any = None

        def fit(self, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> None:
            last = self.last_checkpoint
            try:
                return super().fit(*args, weights_only=True, **kwargs)
            except SIGTERMException:
                msg = last.stop_message() if self.is_global_zero else ""
                raise Interrupted(msg, 128 + 15) from None
            except SystemExit:
                if last is None or last.stopped is None or last.stopped[0] != "SIGINT":
                    raise
                msg = last.stop_message() if self.is_global_zero else ""
                raise Interrupted(msg, 128 + 2) from None

    return Trainer, SafeCheckpointIO


def build_trainer(
    cfg: TrainerConfig,
    out_dir: str | Path,
    max_epochs: int,
    callbacks: list[Any] | None = None,
    bf16_ok: bool = False,
    **kwargs: Any,
):
    """A Lightning Trainer that checkpoints periodically to ``out_dir/checkpoints/last.ckpt``,
    resumes only through the safe loader and reports a stop by signal (see ``Trainer``).

    ``bf16_ok``: an encoder stage, where ``precision: auto`` may pick bf16 on the CPU."""
    import logging

    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from visctr.errors import ConfigError
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
    trainer_cls, safe_io = _trainer_class()
    plugins = [*(kwargs.pop("plugins", None) or []), safe_io()]
    try:
        trainer = trainer_cls(
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
            plugins=plugins,
            **kwargs,
        )
    except (MisconfigurationException, ValueError) as e:
        raise ConfigError(
            f"trainer settings (accelerator={cfg.accelerator}, devices={cfg.devices}, "
            f"strategy={cfg.strategy}, precision={cfg.precision}): {e}"
        ) from None
    trainer.last_checkpoint = ckpt
    return trainer
