"""``CTRModule``: the Lightning training loop of a CTR network, apart from the network.

Loss = BCE on the clicks + whatever the network's ``aux_loss`` returns (S3's
``λ·L_triplet`` when debiasing; the loop does not know what it is), manual optimisation
(one optimiser step per batch, no closure), validation AUC per epoch for early stopping,
best weights kept in memory (and in Lightning checkpoints for resume).

``CTRConfig.compile`` runs the network's forward through ``torch.compile`` during training;
the saved weights are the same either way.
"""

from __future__ import annotations

import copy
import math
import time

import lightning as L
import torch
import torch.nn.functional as F

from visctr.ctr.batch import Batch
from visctr.ctr.config import CTRConfig
from visctr.ctr.model import CTRNet
from visctr.eval.metrics import auc, logloss


class CTRModule(L.LightningModule):
    """Training loop glue: loss, optimiser, validation AUC, best-weights tracking, history."""

    def __init__(self, net: CTRNet, cfg: CTRConfig, seed: int, weights=None):
        super().__init__()
        self.net = net
        self.weights = weights  # e.g. IPSWeights: batch -> per-impression loss weights
        self.cfg = cfg
        self.automatic_optimization = False
        self._gen = torch.Generator().manual_seed(seed)  # for the network's aux_loss
        self._compiled = None  # built on first use; never pickled or deep-copied
        self.best_auc = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self._reset_epoch()

    def _train_forward(self, batch: Batch) -> torch.Tensor:
        """The training forward: ``self.net``, through ``torch.compile`` when configured.

        The compiled function is a plain attribute (not a submodule), so state_dict keys
        and checkpoints are the same either way; validation and inference stay eager.
        """
        if not self.cfg.compile:
            return self.net(batch)
        if self._compiled is None:
            self._compiled = torch.compile(self.net.forward)
        return self._compiled(batch)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {**state, "_compiled": None}  # a compiled closure is bound to this process

    def _reset_epoch(self) -> None:
        self._loss_sum = torch.zeros(())
        self._aux_sums = {name: torch.zeros(()) for name in self.net.aux_parts}
        self._steps = 0
        self._t0 = time.perf_counter()
        self._val_p: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []

    def _aux_means(self, steps: int) -> dict[str, float]:
        """Epoch means of the parts the network's aux loss reported (e.g. ``triplet_loss``)."""
        return {name: float(total) / steps for name, total in self._aux_sums.items()}

    def configure_optimizers(self):
        fused = self.device.type in ("cpu", "cuda") or None  # one kernel per step, not ~10
        return torch.optim.Adam(
            self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=fused
        )

    def on_train_epoch_start(self) -> None:
        self._reset_epoch()

    def training_step(self, batch, batch_idx):
        """One optimiser step per ``Batch``; ``batch`` is one or a list of them (``Grouped``)."""
        group = [batch] if isinstance(batch, Batch) else batch
        opt = self.optimizers()
        for b in group:
            w = self.weights(b) if self.weights is not None else None
            loss = F.binary_cross_entropy_with_logits(self._train_forward(b), b.labels, weight=w)
            aux, parts = self.net.aux_loss(b, self._gen)
            total = loss if aux is None else loss + aux
            for name, value in parts.items():
                self._aux_sums[name] += value.detach().cpu()
            opt.zero_grad(set_to_none=True)
            self.manual_backward(total)
            opt.step()
            self._loss_sum += loss.detach().cpu()
            self._steps += 1

    def validation_step(self, batch: Batch, batch_idx):
        self._val_p.append(torch.sigmoid(self.net(batch)).float().cpu())
        self._val_y.append(batch.labels.cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_p:
            return
        p = torch.cat(self._val_p).numpy()
        y = torch.cat(self._val_y).numpy()
        self._val_p, self._val_y = [], []
        val_auc, val_ll = auc(y, p), logloss(y, p)
        # under DDP every rank scores the same validation rows, so val_auc is the same on all
        self.log("val_auc", val_auc, prog_bar=True, sync_dist=True)
        if self.trainer.sanity_checking:
            return
        steps = max(self._steps, 1)
        self.history.append(
            {
                "epoch": self.current_epoch,
                "train_loss": float(self._loss_sum) / steps,
                **self._aux_means(steps),
                "val_auc": val_auc,
                "val_logloss": val_ll,
                "steps": self._steps,
                "seconds": round(time.perf_counter() - self._t0, 3),
            }
        )
        if val_auc > self.best_auc:
            self.best_auc = val_auc
            self.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
            )

    def on_train_epoch_end(self) -> None:
        if self.trainer.val_dataloaders is None or not self.trainer.enable_validation:
            steps = max(self._steps, 1)
            self.history.append(
                {
                    "epoch": self.current_epoch,
                    "train_loss": float(self._loss_sum) / steps,
                    **self._aux_means(steps),
                    "steps": self._steps,
                    "seconds": round(time.perf_counter() - self._t0, 3),
                }
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["visctr_best"] = {
            "auc": self.best_auc,
            "state": self.best_state,
            "history": self.history,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("visctr_best") or {}
        self.best_auc = best.get("auc", -math.inf)
        self.best_state = best.get("state")
        self.history = list(best.get("history", []))
