"""``CTRModule``: the Lightning training loop of a CTR network, apart from the network.

Loss = BCE on the clicks + whatever the network's ``aux_loss`` returns (S3's
``λ·L_triplet`` when debiasing; the loop does not know what it is), manual optimisation
(one optimiser step per batch, no closure), validation AUC per epoch for early stopping,
best weights kept in memory (and in Lightning checkpoints for resume).

Exact resume: a checkpoint holds, besides the weights and optimiser state Lightning saves,
everything else the rest of the run depends on: the training stream's position (epoch and
batches consumed, see ``stream``), the aux-loss generator, the RNG that dropout draws from
(owned by the module: every training step runs under its own forked RNG state, so nothing
else that draws from torch's global RNG, such as a DataLoader starting an epoch, moves it),
and the running sums of the epoch's history line. A run killed mid-epoch and resumed takes
the same steps, with the same draws, as one never interrupted.

``CTRConfig.compile`` runs the training step's network pass through ``torch.compile``
(``CTRNet.forward_prepared``: with S3, everything after the data-dependent row plan);
the saved model has the same keys and format either way (the values differ by float
rounding, as fused kernels sum in another order).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from visctr.ctr.batch import Batch
from visctr.ctr.config import CTRConfig
from visctr.ctr.model import CTRNet
from visctr.errors import InputError
from visctr.metrics import auc, logloss

STATE_KEY = "visctr_resume"  # the checkpoint entry of the state below


class CTRModule(L.LightningModule):
    """Training loop glue: loss, optimiser, validation AUC, best-weights tracking, history.

    ``stream``: the training ``ImpressionStream`` (anything with ``set_epoch`` and
    ``set_position``); given, checkpoints record its position and resume continues it.
    """

    def __init__(self, net: CTRNet, cfg: CTRConfig, seed: int, weights=None, stream=None):
        super().__init__()
        self.net = net
        self.weights = weights  # e.g. IPSWeights: batch -> per-impression loss weights
        self.cfg = cfg
        self.stream = stream
        self.automatic_optimization = False
        self._seed = int(seed)
        self._gen = torch.Generator().manual_seed(seed)  # for the network's aux_loss
        self._rng: dict[str, torch.Tensor] | None = None  # dropout's RNG state between steps
        self._compiled = None  # built on first use; never pickled or deep-copied
        self._compiled_step = None  # the same for forward_prepared
        self.best_auc = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self._reset_epoch()

    def _train_forward(self, batch: Batch) -> torch.Tensor:
        """The training forward of a network without ``prepare``/``forward_prepared``:
        ``self.net``, through ``torch.compile`` when configured.

        The compiled function is a plain attribute (not a submodule), so state_dict keys
        and checkpoints are the same either way; validation and inference stay eager.
        """
        if not self.cfg.compile:
            return self.net(batch)
        if self._compiled is None:
            self._compiled = torch.compile(self.net.forward)
        return self._compiled(batch)

    def _train_outputs(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """Logits, aux term and its parts of a training batch. A network with ``prepare``
        and ``forward_prepared`` (``CTRNet``) takes one pass (S3 shares its head's work
        between the batch and the triplets); ``prepare`` runs eagerly and, with
        ``ctr.compile``, ``forward_prepared`` through ``torch.compile``. Any other network:
        ``forward`` (compiled when configured) + ``aux_loss``."""
        prepare = getattr(self.net, "prepare", None)
        if prepare is None or getattr(self.net, "forward_prepared", None) is None:
            logits = self._train_forward(batch)
            return logits, *self.net.aux_loss(batch, self._gen)
        plan = prepare(batch, self._gen)
        if not self.cfg.compile:
            return self.net.forward_prepared(batch, plan)
        if self._compiled_step is None:
            # dynamic shapes from the start: with S3 the distinct items vary batch to batch,
            # and one graph serves every row count (plain steps: as fast as static, A/B)
            self._compiled_step = torch.compile(self.net.forward_prepared, dynamic=True)
        return self._compiled_step(batch, plan)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        # a compiled closure is bound to this process
        return {**state, "_compiled": None, "_compiled_step": None}

    def _reset_epoch(self) -> None:
        """Start the running sums of an epoch (at the end of the previous one, so that a
        run resumed mid-epoch keeps the sums it restored)."""
        self._loss_sum = torch.zeros(())
        self._aux_sums = {name: torch.zeros(()) for name in self.net.aux_parts}
        self._steps = 0
        self._batches = 0  # batches of the stream consumed this epoch
        self._epoch_done = False
        self._t0 = time.perf_counter()
        self._val_p: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run the block under this module's RNG state (what dropout draws), not torch's
        global one: the draws depend only on the seed and the steps taken, and a resumed
        run restores them from the checkpoint. Seeded from ``seed`` on first use."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else [], device_type="cuda"):
            if self._rng is None:
                torch.default_generator.manual_seed(self._seed + 1)
                if cuda:
                    torch.cuda.default_generators[self.device.index or 0].manual_seed(
                        self._seed + 1
                    )
            else:
                torch.set_rng_state(self._rng["cpu"])
                if cuda:
                    torch.cuda.set_rng_state(self._rng["cuda"], self.device)
            yield
            self._rng = {"cpu": torch.get_rng_state()}
            if cuda:
                self._rng["cuda"] = torch.cuda.get_rng_state(self.device)

    def _aux_means(self, steps: int) -> dict[str, float]:
        """Epoch means of the parts the network's aux loss reported (e.g. ``triplet_loss``)."""
        return {name: float(total) / steps for name, total in self._aux_sums.items()}

    def configure_optimizers(self):
        fused = self.device.type in ("cpu", "cuda") or None  # one kernel per step, not ~10
        return torch.optim.Adam(
            self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=fused
        )

    def on_train_epoch_start(self) -> None:
        self._epoch_done = False
        self._t0 = time.perf_counter()
        self._val_p, self._val_y = [], []
        if self.stream is not None:
            # the pass about to start (epoch 0 or a resumed one started before this hook,
            # with the position set on load: the same epoch)
            self.stream.set_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx):
        """One optimiser step per ``Batch``; ``batch`` is one or a list of them (``Grouped``)."""
        group = [batch] if isinstance(batch, Batch) else batch
        opt = self.optimizers()
        with self._own_rng():
            self._steps_on(group, opt)
        self._batches += len(group)

    def _steps_on(self, group: list[Batch], opt) -> None:
        for b in group:
            w = self.weights(b) if self.weights is not None else None
            logits, aux, parts = self._train_outputs(b)
            loss = F.binary_cross_entropy_with_logits(logits, b.labels, weight=w)
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
        # logger=False: Lightning would log it at its own batch counter, not at the
        # global_step the epoch/* history rows use; the loggers get it below on that axis
        self.log("val_auc", val_auc, prog_bar=True, sync_dist=True, logger=False)
        if self.trainer.sanity_checking:
            return
        for lg in self.trainer.loggers:  # rank-zero only inside each logger
            lg.log_metrics({"val_auc": float(val_auc)}, step=self.trainer.global_step)
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
        # runs before the epoch-end checkpoint (a Checkpoint callback runs after the module)
        self._reset_epoch()
        self._epoch_done = True

    def _position(self) -> tuple[int, int]:
        """(epoch, batches consumed in it) of the training stream: where a resume starts."""
        if self._epoch_done:
            return self.current_epoch + 1, 0
        return self.current_epoch, self._batches

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["visctr_best"] = {
            "auc": self.best_auc,
            "state": self.best_state,
            "history": self.history,
        }
        epoch, batches = self._position()
        checkpoint[STATE_KEY] = {
            "epoch": epoch,
            "batches": batches,
            "aux_rng": self._gen.get_state(),
            "rng": dict(self._rng) if self._rng is not None else None,
            "loss_sum": self._loss_sum.clone(),
            "aux_sums": {k: v.clone() for k, v in self._aux_sums.items()},
            "steps": self._steps,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        best = checkpoint.get("visctr_best") or {}
        self.best_auc = best.get("auc", -math.inf)
        self.best_state = best.get("state")
        self.history = list(best.get("history", []))
        state = checkpoint.get(STATE_KEY)
        if state is None:  # written before resume was exact: continue as before
            return
        where = getattr(self.trainer, "ckpt_path", None) or "checkpoint"
        state = _check_resume_state(state, self._aux_sums, where)
        self._gen.set_state(state["aux_rng"])
        self._rng = state["rng"]
        self._loss_sum = state["loss_sum"]
        self._aux_sums = state["aux_sums"]
        self._steps = state["steps"]
        self._batches = state["batches"]
        if self.stream is not None:
            self.stream.set_position(state["epoch"], state["batches"])


def _check_resume_state(state: Any, aux_sums: dict, where: str) -> dict:
    """The resume entry of a checkpoint after checking its fields (an ``InputError``
    naming the file otherwise)."""
    from visctr.io import field

    def tensor(v: Any, dtype: torch.dtype) -> bool:
        return isinstance(v, torch.Tensor) and v.dtype == dtype

    def rng_state(v: Any) -> bool:
        return tensor(v, torch.uint8) and v.dim() == 1

    def is_rng(v: Any) -> bool:
        return v is None or (
            isinstance(v, dict)
            and "cpu" in v
            and all(k in ("cpu", "cuda") and rng_state(t) for k, t in v.items())
        )

    p = f"{STATE_KEY}."
    field(state, "epoch", where, int, lo=0, hi=10**9, prefix=p)
    field(state, "batches", where, int, lo=0, hi=10**12, prefix=p)
    field(state, "steps", where, int, lo=0, hi=10**12, prefix=p)
    field(state, "aux_rng", where, torch.Tensor, check=rng_state, prefix=p)
    field(state, "rng", where, (dict, type(None)), check=is_rng, prefix=p)
    field(state, "loss_sum", where, torch.Tensor, check=lambda v: v.dim() == 0, prefix=p)
    sums = field(state, "aux_sums", where, dict, prefix=p)
    if set(sums) != set(aux_sums) or not all(
        isinstance(v, torch.Tensor) and v.dim() == 0 for v in sums.values()
    ):
        raise InputError(
            f"{where}: field {p}aux_sums must hold the scalars {sorted(aux_sums)}; the file "
            "is damaged or from another configuration"
        )
    return state
