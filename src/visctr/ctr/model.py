"""CTR networks: the ``dcnv2`` architecture (fused field embeddings + dense visual features
-> DCNv2 cross ‖ deep MLP) and the open registry ``ARCHS`` behind ``ctr.arch``.

Input per impression: a ``Batch`` (see ``batch``), read by field name. The network

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

A network owns its auxiliary loss: ``aux_loss(batch, generator)`` returns the term the
trainer adds to the click loss (S3's, which ``S3Debias`` computes from ``ctr.debias``) and
its parts for logging, so the trainer (``trainer.CTRModule``) knows nothing of S3.

An architecture is a config choice: ``ctr.arch`` names an entry of ``ARCHS``, a factory
``(fmap, cfg, affinity, triplets) -> network``; add one with ``ARCHS["name"] = Factory``.
A network provides what ``CTRNet`` does: ``forward(batch) -> logits [B]``,
``aux_loss``, ``aux_parts``, ``set_visual_tables(items, queries)`` and ``debias`` (the
S3 head exported as ``debias.pt``, or ``None``); optionally ``prepare`` and
``forward_prepared``, which the trainer then uses for a training step (one pass over the
batch and the aux rows; with ``ctr.compile`` the second is compiled whole) instead of
``forward`` + ``aux_loss``. A ``CTRNet`` subclass that changes ``forward`` must change
``forward_prepared`` to match (or set ``prepare = None`` to train through ``forward``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from visctr.ctr.batch import Batch
from visctr.ctr.config import CTRConfig
from visctr.ctr.feature_map import FeatureMap
from visctr.errors import ConfigError
from visctr.s3.mining import Triplets
from visctr.s3.terms import DebiasData, RowPlan, S3Debias


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
    """The ``dcnv2`` network over ``Batch``es; visual tables set per run (not saved).

    ``triplets``: what trains the S3 head in this run (``cfg.debias.enabled``): a
    ``DebiasData`` (triplets or a disagreement miner, alignment rows, the S1 reference),
    or ``Triplets`` alone. ``None`` for inference, without debiasing, or for a head
    trained by the click loss alone.
    """

    def __init__(
        self,
        fmap: FeatureMap,
        cfg: CTRConfig,
        affinity: np.ndarray | torch.Tensor,
        triplets: DebiasData | Triplets | None = None,
    ):
        super().__init__()
        if triplets is not None and not cfg.debias.enabled:
            raise ValueError("triplets given but cfg.debias.enabled is off")
        self.n_fields = fmap.n_fields
        self.field_dim = cfg.field_dim
        dim = fmap.visual_dim
        self.visual_scale = math.sqrt(dim)
        self.embedding = nn.Embedding(fmap.total_vocab, cfg.field_dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.register_buffer("user_affinity", torch.as_tensor(affinity, dtype=torch.float32))
        self.register_buffer("item_vectors", torch.zeros(0, dim), persistent=False)
        self.register_buffer("query_vectors", torch.zeros(0, dim), persistent=False)
        self.debias = None
        buckets = None  # the exposure-aware gate's input: each item row's popularity bucket
        if cfg.debias.enabled:
            n_buckets = cfg.pop_buckets if cfg.debias.gate_exposure else 0
            self.debias = S3Debias(dim, cfg.debias, triplets, n_buckets)
            if n_buckets:
                buckets = torch.as_tensor(fmap.item_pop_bucket, dtype=torch.long)
        self.register_buffer("item_buckets", buckets, persistent=False)
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

    def inputs(
        self, batch: Batch, plan: RowPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """The two input blocks of a batch: field embeddings ``e`` and the features ``f``,
        and, with the S3 head and a ``plan`` that has extra rows, S3's term and its parts
        (else ``None, {}``).

        ``f = [cos, affinity[cat], affinity, √D·q, √D·i]``. ``x = [e, f]`` feeds the MLP
        and its first ``d_cross`` columns the cross network: the visual vectors interact
        explicitly through ``cos`` (crossing 2·D more columns would cost more than the rest
        of the step). With the S3 head, ``q`` and ``i`` are its normalised gated fusions
        and the term comes with them, in one call (``S3Debias.apply``) along the rows of
        ``plan`` (``S3Debias.prepare``; the batch's own when ``None``).
        """
        b = batch.packed.shape[0]
        emb = self.embedding(batch.sparse).reshape(b, self.n_fields * self.field_dim)
        qv = self.query_vectors.index_select(0, batch.query_row)
        aux, parts = None, {}
        if self.debias is not None:
            if plan is None:
                plan = self.debias.plan(b, batch.item_row)
            qv, iv, aux, parts = self.debias.apply(qv, self.item_vectors, plan, self.item_buckets)
        else:
            iv = self.item_vectors.index_select(0, batch.item_row)
        cos = (qv * iv).sum(-1, keepdim=True)
        aff = self.user_affinity.index_select(0, batch.user_row)
        aff_item = aff.gather(1, batch.category.unsqueeze(1))
        s = self.visual_scale
        return emb, torch.cat([cos, aff_item, aff, qv * s, iv * s], dim=1), aux, parts

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[B]``."""
        emb, feats, _, _ = self.inputs(batch)
        return self._logits(emb, feats)

    def prepare(self, batch: Batch, generator: torch.Generator) -> RowPlan | None:
        """The data-dependent part of a training step, run eagerly: S3's draws from
        ``generator`` and its row plan (``S3Debias.prepare``; ``None`` without the S3 head).
        :meth:`forward_prepared` does the rest."""
        if self.debias is None:
            return None
        n = batch.packed.shape[0]
        return self.debias.prepare(n, batch.item_row, generator, self.item_vectors)

    def forward_prepared(
        self, batch: Batch, plan: RowPlan | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """``(logits, aux term, its parts)`` of a training batch given :meth:`prepare`'s
        plan: gathers and arithmetic only, so ``torch.compile`` takes it whole
        (``ctr.compile``) with no graph break at ``torch.unique``. The extra rows go
        through the debias head together with the batch's items."""
        emb, feats, aux, parts = self.inputs(batch, plan)
        return self._logits(emb, feats), aux, parts

    def forward_with_aux(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """``(forward(batch), *aux_loss(batch, generator))`` in one pass (same draws, same
        values as the two calls): ``forward_prepared(batch, prepare(batch, generator))``."""
        return self.forward_prepared(batch, self.prepare(batch, generator))

    def _logits(self, emb: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        out = self.deep_out(self.deep(self.deep_in(emb, feats)))
        if self.cross:
            x0 = torch.cat([emb, feats[:, : self.d_cross - self.d_sparse]], dim=1)
            xl = x0
            for layer in self.cross:
                xl = layer(x0, xl)
            out = out + self.cross_out(xl)
        return out.squeeze(1)

    @property
    def aux_parts(self) -> tuple[str, ...]:
        """Names of the parts ``aux_loss`` reports (the trainer logs their epoch means)."""
        return () if self.debias is None else self.debias.parts

    def aux_loss(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The term added to the click loss of ``batch`` (``None``: nothing to add) and its
        unweighted parts by name. Here S3's ``λ·L_triplet`` on triplets drawn with
        ``generator``; it does not depend on the batch."""
        if self.debias is None:
            return None, {}
        return self.debias.aux_loss(self.item_vectors, generator)


# (fmap, cfg, affinity, triplets) -> a network with CTRNet's interface
CTRNetFactory = Callable[..., nn.Module]
ARCHS: dict[str, CTRNetFactory] = {"dcnv2": CTRNet}  # open: add entries to offer more


def arch_factory(name: str) -> CTRNetFactory:
    """The registered factory of ``ctr.arch`` ``name``; a ``ConfigError`` listing the known
    ones otherwise."""
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(
            f"ctr.arch: unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}"
        ) from None


def build_ctr_net(
    cfg: CTRConfig,
    fmap: FeatureMap,
    affinity: np.ndarray | torch.Tensor,
    triplets: DebiasData | Triplets | None = None,
) -> CTRNet:
    """The CTR network ``cfg.arch`` for this feature map (weights freshly initialised from
    torch's global RNG); ``triplets`` give the S3 head its loss when debiasing."""
    return arch_factory(cfg.arch)(fmap, cfg, affinity, triplets)
