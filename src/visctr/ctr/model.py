"""The CTR model: fused field embeddings + dense visual features -> DCNv2 cross ‖ deep MLP.

Input per impression (see ``features``): one packed int64 row. The network

1. looks up all sparse fields in **one** embedding table (fields at fixed offsets, one
   ``index_select`` for the whole batch, no per-field Python loop);
2. gathers the query and item visual vectors by row from tables held as buffers
   (optionally through the S3 debias head + gate), their cosine similarity, and the
   user's category-affinity row and its entry for the item's category;
3. feeds ``x_c = [field embeddings, cos, affinity[cat], affinity]`` to a DCNv2 cross
   network (low-rank by default) and ``[x_c, √D·q, √D·i]`` to a deep MLP in parallel;
   the logit is the sum of a linear read-out of each (DCNv2's parallel structure).
   The visual vectors reach the cross part through ``cos`` only: crossing their 2·D
   columns too would cost more than the rest of the training step on CPU.

The deep MLP's first layer is one ``Linear`` over that concatenation, stored as two
weight blocks (``BlockLinear``): field embeddings, and the dense/visual features. The
result is the same function, but backward computes an input gradient only for the block
that needs one — the visual columns come from frozen tables, and skipping their input
gradient removes about an eighth of the step's matmul work. With the debias head on,
the visual block needs its gradient and gets it.

``CTRConfig.compile`` runs the network through ``torch.compile`` during training (see
``CTRModule``); the saved weights are the same either way.

``CTRModule`` is the Lightning wrapper: BCE (+ λ·triplet loss when debiasing), manual
optimisation (one optimiser step per batch, no closure), validation AUC per epoch for
early stopping, best weights kept in memory (and in Lightning checkpoints for resume).
"""

from __future__ import annotations

import copy
import math
import time

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visctr.ctr.config import CTRConfig
from visctr.ctr.debias import DebiasHead, Triplets, triplet_loss
from visctr.ctr.features import FeatureMap
from visctr.eval.metrics import auc, logloss


class CrossLayer(nn.Module):
    """DCNv2 cross: ``x0 ⊙ (W x + b) + x`` with ``W = U V`` when ``rank > 0``."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        if rank > 0:
            self.w = nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
        else:
            self.w = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x, x0, self.w(x))


class BlockLinear(nn.Module):
    """``Linear(d_a + d_b, out)`` applied to ``[a, b]`` with the weight held as two blocks.

    Same function and initialisation bound as one ``nn.Linear`` over the concatenation;
    autograd computes ``∂/∂b`` only when ``b`` requires a gradient.
    """

    def __init__(self, d_a: int, d_b: int, out: int):
        super().__init__()
        self.a = nn.Linear(d_a, out, bias=False)
        self.b = nn.Linear(d_b, out)
        bound = 1.0 / math.sqrt(d_a + d_b)  # nn.Linear's default over the full fan-in
        for t in (self.a.weight, self.b.weight, self.b.bias):
            nn.init.uniform_(t, -bound, bound)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b(b), a, self.a.weight.t())


def mlp(dims: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class CTRNet(nn.Module):
    """Plain PyTorch CTR network over packed index rows; visual tables set per run."""

    def __init__(self, fmap: FeatureMap, cfg: CTRConfig, affinity: np.ndarray | torch.Tensor):
        super().__init__()
        self.n_fields = fmap.n_fields
        self.field_dim = cfg.field_dim
        dim = fmap.visual_dim
        self.visual_scale = math.sqrt(dim)
        self.embedding = nn.Embedding(fmap.total_vocab, cfg.field_dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.register_buffer("user_affinity", torch.as_tensor(affinity, dtype=torch.float32))
        self.register_buffer("item_vectors", torch.zeros(0, dim), persistent=False)
        self.register_buffer("query_vectors", torch.zeros(0, dim), persistent=False)
        self.debias = DebiasHead(dim, cfg.debias.hidden) if cfg.debias.enabled else None
        self.d_sparse = self.n_fields * cfg.field_dim
        self.d_cross = self.d_sparse + 2 + fmap.n_categories
        self.d_in = self.d_cross + 2 * dim
        self.cross = nn.ModuleList(
            CrossLayer(self.d_cross, cfg.cross_rank) for _ in range(cfg.cross_layers)
        )
        self.cross_out = nn.Linear(self.d_cross, 1, bias=False) if cfg.cross_layers else None
        self.deep_in = BlockLinear(self.d_sparse, self.d_in - self.d_sparse, cfg.mlp[0])
        head: list[nn.Module] = [nn.ReLU()] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
        self.deep = nn.Sequential(*head, *mlp(cfg.mlp, cfg.dropout))
        self.deep_out = nn.Linear(cfg.mlp[-1], 1)

    def set_visual_tables(self, items: np.ndarray, queries: np.ndarray) -> None:
        """Item vectors aligned to item rows and query vectors to query rows (not saved)."""
        self.item_vectors = torch.as_tensor(items, dtype=torch.float32)
        self.query_vectors = torch.as_tensor(queries, dtype=torch.float32)

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two input blocks of a batch: field embeddings ``e`` and the features ``f``.

        ``f = [cos, affinity[cat], affinity, √D·q, √D·i]``. ``x = [e, f]`` feeds the MLP
        and its first ``d_cross`` columns the cross network: the visual vectors interact
        explicitly through ``cos`` (crossing 2·D more columns would cost more than the rest
        of the step).
        """
        f = self.n_fields
        b = idx.shape[0]
        emb = self.embedding(idx[:, :f]).reshape(b, f * self.field_dim)
        user, item, query, cat = idx[:, f], idx[:, f + 1], idx[:, f + 2], idx[:, f + 3]
        iv = self.item_vectors.index_select(0, item)
        qv = self.query_vectors.index_select(0, query)
        if self.debias is not None:
            both = F.normalize(self.debias(torch.cat([qv, iv])), dim=-1)
            qv, iv = both[:b], both[b:]
        cos = (qv * iv).sum(-1, keepdim=True)
        aff = self.user_affinity.index_select(0, user)
        aff_item = aff.gather(1, cat.unsqueeze(1))
        s = self.visual_scale
        return emb, torch.cat([cos, aff_item, aff, qv * s, iv * s], dim=1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]``."""
        emb, feats = self.inputs(idx)
        out = self.deep_out(self.deep(self.deep_in(emb, feats)))
        if self.cross:
            x0 = torch.cat([emb, feats[:, : self.d_cross - self.d_sparse]], dim=1)
            xl = x0
            for layer in self.cross:
                xl = layer(x0, xl)
            out = out + self.cross_out(xl)
        return out.squeeze(1)


class CTRModule(L.LightningModule):
    """Training loop glue: loss, optimiser, validation AUC, best-weights tracking, history."""

    def __init__(self, net: CTRNet, cfg: CTRConfig, triplets: Triplets | None, seed: int):
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.triplets = triplets
        self.automatic_optimization = False
        self._gen = torch.Generator().manual_seed(seed)
        self._compiled = None  # built on first use; never pickled or deep-copied
        self.best_auc = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self._reset_epoch()

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward: ``self.net``, through ``torch.compile`` when configured.

        The compiled function is a plain attribute (not a submodule), so state_dict keys
        and checkpoints are the same either way; validation and inference stay eager.
        """
        if not self.cfg.compile:
            return self.net(x)
        if self._compiled is None:
            self._compiled = torch.compile(self.net.forward)
        return self._compiled(x)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {**state, "_compiled": None}  # a compiled closure is bound to this process

    def _reset_epoch(self) -> None:
        self._loss_sum = torch.zeros(())
        self._trip_sum = torch.zeros(())
        self._steps = 0
        self._t0 = time.perf_counter()
        self._val_p: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []

    def configure_optimizers(self):
        fused = self.device.type in ("cpu", "cuda") or None  # one kernel per step, not ~10
        return torch.optim.Adam(
            self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=fused
        )

    def on_train_epoch_start(self) -> None:
        self._reset_epoch()

    def training_step(self, batch, batch_idx):
        """One optimiser step per ``(x, y)`` pair; ``batch`` is a list of pairs (``Grouped``)."""
        pairs = [batch] if isinstance(batch, tuple) else batch
        opt = self.optimizers()
        for x, y in pairs:
            loss = F.binary_cross_entropy_with_logits(self._train_forward(x), y)
            total = loss
            if self.triplets is not None and self.net.debias is not None:
                k = self.cfg.debias.triplets_per_step
                a, p, n = (t.to(x.device) for t in self.triplets.sample(k, self._gen))
                iv = self.net.item_vectors
                d = self.net.debias.net(torch.cat([iv[a], iv[p], iv[n]]))
                trip = triplet_loss(d[:k], d[k : 2 * k], d[2 * k :], self.cfg.debias.margin)
                total = loss + self.cfg.debias.weight * trip
                self._trip_sum += trip.detach().cpu()
            opt.zero_grad(set_to_none=True)
            self.manual_backward(total)
            opt.step()
            self._loss_sum += loss.detach().cpu()
            self._steps += 1

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._val_p.append(torch.sigmoid(self.net(x)).float().cpu())
        self._val_y.append(y.cpu())

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
                "triplet_loss": float(self._trip_sum) / steps
                if self.triplets is not None
                else None,
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
