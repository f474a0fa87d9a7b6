"""Shared Lightning trainer settings: every training stage (S1, S2, ResNet-C, CTR) uses these.

DDP multi-GPU and multi-node (torchrun / SLURM) come from Lightning: set ``devices``,
``num_nodes``, ``strategy`` and ``precision``. Progress: Lightning's bars on a terminal,
one line per epoch when stdout is a file or a pipe (a log of bar redraws is megabytes).
``logger``: Lightning's CSV or TensorBoard logger under ``OUT/logs/version_N/``, with the
step metrics and every epoch's history row.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visctr.errors import Interrupted
from visctr.precision import PRECISIONS

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
LOGGERS = ("none", "csv", "tensorboard")
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
    # progress: bars when stdout is a terminal, one line per epoch otherwise; false: none
    progress_bar: bool = True
    logger: str = "none"  # none | csv | tensorboard (Lightning's loggers, OUT/logs/)

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
        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {', '.join(LOGGERS)}, got {self.logger!r}")


def check_logger(name: str) -> None:
    """A ``ConfigError`` when logger ``name`` needs a package that is not installed.

    Not in ``TrainerConfig`` itself: a saved config must load where the package is absent
    (evaluating a model trained with ``logger: tensorboard``)."""
    from visctr.errors import ConfigError

    if name == "tensorboard" and not any(
        importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX")
    ):
        raise ConfigError(
            "logger tensorboard needs the tensorboard package, which is not installed: "
            "pip install tensorboard, or use --logger csv"
        )


def _logger(cfg: TrainerConfig, out_dir: Path):
    """Lightning's logger for ``cfg.logger`` writing under ``out_dir/logs``; False for none."""
    check_logger(cfg.logger)
    if cfg.logger == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out_dir), name="logs")
    if cfg.logger == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(out_dir), name="logs")
    return False


def _new_history(pl_module: Any, start: int) -> list[dict]:
    """The history rows ``pl_module`` appended since it had ``start`` of them."""
    history = getattr(pl_module, "history", None)
    return list(history[start:]) if isinstance(history, list) else []


def _history_len(pl_module: Any) -> int:
    history = getattr(pl_module, "history", None)
    return len(history) if isinstance(history, list) else 0


def _numeric(row: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
    }


def _epoch_callbacks():
    import lightning as L
    from lightning.pytorch.callbacks.progress import ProgressBar

    class _EpochRows:
        """Hands each epoch's new history rows to ``emit`` once the epoch is complete.

        Stages append their row at different points (the last batch, validation end, the
        module's own epoch end, which runs after the callbacks'), so a row is picked up at
        the next epoch's start or at the end of training, when every one of them has run.
        """

        def __init__(self) -> None:
            self._start = 0
            self._epoch: int | None = None
            self._t0 = 0.0
            self._seconds = 0.0
            self._metrics: dict[str, float] = {}

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._flush(trainer, pl_module)
            self._start = _history_len(pl_module)
            self._epoch = int(trainer.current_epoch) + 1
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._seconds = time.perf_counter() - self._t0
            self._metrics = {
                k: float(v)
                for k, v in trainer.progress_bar_metrics.items()
                if isinstance(v, (int, float))
            }

        def on_train_end(self, trainer, pl_module) -> None:
            self._flush(trainer, pl_module)

        def _flush(self, trainer, pl_module) -> None:
            if self._epoch is None:
                return
            rows = _new_history(pl_module, self._start)
            self.emit(trainer, self._epoch, rows, self._metrics, self._seconds)
            self._epoch = None

        def emit(self, trainer, epoch, rows, metrics, seconds) -> None:  # pragma: no cover
            raise NotImplementedError

    class EpochLines(_EpochRows, ProgressBar):
        """The progress display when stdout is not a terminal: one line per epoch, the
        epoch's history row (mean losses, kNN accuracy, validation AUC) or, for a module
        without one, the progress-bar metrics; no carriage-return redraws."""

        def __init__(self) -> None:
            _EpochRows.__init__(self)
            ProgressBar.__init__(self)
            self._enabled = True

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def emit(self, trainer, epoch, rows, metrics, seconds) -> None:
            if not (self._enabled and trainer.is_global_zero):
                return
            values = _numeric(rows[-1]) if rows else dict(metrics)
            for k in ("seconds", "steps"):
                values.pop(k, None)
            name = Path(trainer.default_root_dir).name
            total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
            parts = [f"[{name}] epoch {epoch}/{total}"]
            parts += [f"{k} {v:.4g}" for k, v in values.items()]
            print("  ".join([*parts, f"({seconds:.1f}s)"]), flush=True)

    class HistoryToLoggers(_EpochRows, L.Callback):
        """Every epoch's history row to the configured loggers, as ``epoch/<name>``
        (the stages keep their mean losses, kNN probe and validation figures there)."""

        def emit(self, trainer, epoch, rows, metrics, seconds) -> None:
            for row in rows:
                values = {f"epoch/{k}": v for k, v in _numeric(row).items()}
                values["epoch"] = float(epoch)
                for lg in trainer.loggers:
                    lg.log_metrics(values, step=trainer.global_step)
            for lg in trainer.loggers:
                lg.save()

    return EpochLines, HistoryToLoggers


def progress_on_terminal() -> bool:
    """Lightning draws its bars on stdout: bars only when that is a terminal."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


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


def _at_last_batch(trainer) -> bool:
    """True after an epoch's last training batch and before that epoch's end hooks."""
    loop = trainer.fit_loop
    epoch = loop.epoch_progress.current
    return bool(loop.epoch_loop.batch_progress.is_last_batch) and epoch.processed < epoch.started


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

        Never at the last batch of an epoch: Lightning resumes from such a checkpoint as if
        the epoch had finished, skipping its validation (and, for a streamed loader, with
        nothing left to read), so a save due there waits for the end of the epoch, and a
        SIGTERM that lands there keeps the previous checkpoint.
        """

        def __init__(self, path: Path, every_n_steps: int):
            self.path = Path(path)
            self.every_n_steps = int(every_n_steps)
            self._saved_at = 0
            self._due = False  # a save deferred from an epoch's last batch to its end
            self.saved_step: int | None = None  # step of the checkpoint on disk, if any
            self.saved_on_stop = False
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
                self._saved_at = step
                if _at_last_batch(trainer):
                    self._due = True
                else:
                    self._save(trainer)

        def on_train_start(self, trainer, *args) -> None:
            self._saved_at = trainer.global_step  # resumed runs start from their step
            if self.path.is_file():
                self.saved_step = trainer.global_step

        def on_train_epoch_end(self, trainer, *args) -> None:
            if not self.every_n_steps or self._due:
                self._save(trainer)
                self._due = False

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            if isinstance(exception, SIGTERMException):
                self.saved_on_stop = not _at_last_batch(trainer)
                if self.saved_on_stop:
                    self._save(trainer)
                self.stopped = ("SIGTERM", trainer.global_step)
            elif isinstance(exception, KeyboardInterrupt):
                self.stopped = ("SIGINT", trainer.global_step)

        def stop_message(self) -> str:
            """One line: what stopped training and how to go on."""
            how, step = self.stopped or ("a signal", -1)
            if how == "SIGTERM" and self.saved_on_stop:
                return (
                    f"stopped by SIGTERM at step {step}; saved {self.path}: rerun the same "
                    "command to resume from it"
                )
            verb = "stopped by SIGTERM" if how == "SIGTERM" else "interrupted"
            if self.saved_step is not None and self.path.is_file():
                return (
                    f"{verb} at step {step}; rerun the same command to resume from "
                    f"{self.path} (step {self.saved_step})"
                )
            return (
                f"{verb} at step {step}, before the first checkpoint; rerun the same "
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
                with quiet_pytree():
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


@contextlib.contextmanager
def quiet_pytree() -> Iterator[None]:
    """Lightning's own pytree helper (``fit``, ``CombinedLoader``) builds torch's LeafSpec,
    which torch 2.14 deprecates with a FutureWarning on every run; nothing a user can act
    on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        yield


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
    from visctr.precision import cuda_defaults, resolve_precision

    # Lightning's banner lines (GPU available, tips) are noise in a multi-stage run.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    cuda_defaults(cfg.accelerator)  # TF32 where fp32 remains (GPUs only)
    # Deterministic mode also fills every new tensor with NaN (a debugging aid); that
    # halves CPU throughput and is not needed for reproducible results.
    torch.utils.deterministic.fill_uninitialized_memory = False
    out_dir = Path(out_dir)
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt = _last_checkpoint_callback()(last, cfg.checkpoint_every_n_steps)
    env_quiet = os.environ.get("VISCTR_QUIET") == "1"
    trainer_cls, safe_io = _trainer_class()
    plugins = [*(kwargs.pop("plugins", None) or []), safe_io()]
    progress = cfg.progress_bar and not env_quiet
    epoch_lines, history_to_loggers = _epoch_callbacks()
    extra = []
    if progress and not progress_on_terminal():
        extra.append(epoch_lines())
    logger = _logger(cfg, out_dir)
    if logger:
        extra.append(history_to_loggers())
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
            callbacks=[ckpt, *(callbacks or []), *extra],
            enable_progress_bar=progress,
            enable_model_summary=False,
            logger=logger,
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
