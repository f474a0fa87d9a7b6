"""Shared LightningModule of the encoder stages: optimiser + schedule, per-step seeded
randomness, epoch history with the online kNN probe, checkpointed state.

A method subclass implements :meth:`EncoderMethod.step_loss` (returns the loss and named
parts to log), if it has trainable heads to keep :meth:`EncoderMethod.heads_state`, and if
something follows the weights (an EMA target) :meth:`EncoderMethod.after_optimizer_step`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch

from visctr.encoders.augment import step_generator
from visctr.encoders.backbones import Encoder
from visctr.encoders.config import StageConfig
from visctr.encoders.probe import KnnProbe


class EncoderMethod(L.LightningModule):
    def __init__(
        self, encoder: Encoder, cfg: StageConfig, seed: int, probe: KnnProbe | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.seed = int(seed)
        self.probe = probe
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._epoch_start: float | None = None

    # --- for subclasses ------------------------------------------------------------
    def step_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def heads_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}

    def after_optimizer_step(self) -> None:
        """Runs right after every optimiser step, before the step's callbacks (so an EMA
        update is in the checkpoint of that step)."""

    def generator(self, stream: int = 0) -> torch.Generator:
        """Randomness of this step: fixed by (seed, global step, rank, stream)."""
        return step_generator(
            self.seed + 7_777 * self.global_rank, self.global_step, self.device, stream
        )

    def cpu_generator(self, stream: int = 0) -> torch.Generator:
        return step_generator(self.seed + 7_777 * self.global_rank, self.global_step, "cpu", stream)

    # --- Lightning hooks -----------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self._epoch_start is None:
            self._epoch_start = time.perf_counter()
        loss, parts = self.step_loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at step {self.global_step}; lower the learning rate"
            )
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=1)
        for name, value in {"loss": loss, **parts}.items():
            v = value.detach().float()
            self._sums[name] = self._sums.get(name, torch.zeros((), device=v.device)) + v
        self._count += 1
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def finish_epoch(self) -> None:
        """Append this epoch's history row (mean losses, kNN probe); once per epoch.

        Called by :class:`EpochEnd` after the epoch's last batch, i.e. *before* the
        checkpoint of that step is written, so a resumed run keeps every row.
        """
        epoch = int(self.current_epoch) + 1
        if self._count == 0 or (self.history and self.history[-1]["epoch"] >= epoch):
            return
        row: dict[str, float] = {"epoch": epoch}
        for name, total in self._sums.items():
            mean = total / self._count
            if self.trainer.world_size > 1:
                mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
            row[name] = float(mean)
        if self.probe is not None and self.trainer.is_global_zero:
            row["knn_acc"] = self.probe.accuracy(self.encoder)
        start = self._epoch_start if self._epoch_start is not None else time.perf_counter()
        row["seconds"] = round(time.perf_counter() - start, 2)
        self.history.append(row)
        self._sums, self._count, self._epoch_start = {}, 0, None

    def on_train_epoch_end(self) -> None:
        self.finish_epoch()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["visctr_history"] = [dict(r) for r in self.history]
        checkpoint["visctr_epoch_sums"] = {k: float(v) for k, v in self._sums.items()}
        checkpoint["visctr_epoch_count"] = self._count

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(r) for r in checkpoint.get("visctr_history", [])]
        self._sums = {
            k: torch.tensor(v) for k, v in checkpoint.get("visctr_epoch_sums", {}).items()
        }
        self._count = int(checkpoint.get("visctr_epoch_count", 0))

    def configure_optimizers(self):
        cfg = self.cfg
        decay, no_decay = [], []
        for p in self.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)  # no decay on BN and biases
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
        else:
            opt = torch.optim.AdamW(groups, lr=cfg.lr)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(round(cfg.warmup_epochs * total / cfg.epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _WarmupCosine(warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _WarmupCosine:
    """Linear warm-up then cosine decay to zero; a picklable callable for LambdaLR."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(self.total - self.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class EpochEnd(L.Callback):
    """Closes the epoch's history row right after its last batch (Lightning runs
    ``ModelCheckpoint`` after other callbacks, so the row is in that step's checkpoint)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = trainer.num_training_batches
        if isinstance(pl_module, EncoderMethod) and n != float("inf") and batch_idx + 1 >= n:
            pl_module.finish_epoch()
