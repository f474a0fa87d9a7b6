"""S3: the debias network, the gate, triplet mining with the S1 reference, and export.

- ``DebiasNet`` maps any visual embedding (query or item) to a debiased one: a small
  residual MLP, ``d = normalize(v + MLP(v))``, its last layer zero-initialised so it
  starts as the identity.
- ``Gate`` fuses the original and the debiased vector: ``g·v + (1−g)·d`` with
  ``g = sigmoid(Linear([v, d]))`` one gate per dimension.
- Triplets (our choice; the paper gives only the outline): anchor = a head item (top
  ``head_share`` of items by fit-part training impressions, the one head/tail rule of
  ``visctr.world.head_tail``); positive = a tail item among its ``k_neighbours`` nearest
  in S1 space; negative = a tail item far from it in S1 space: by default
  (``negatives: farthest``) among its ``k_far`` farthest. Those are apart from
  the start, so on ``small`` the loss is ~5e-4 and the term teaches little.
  ``negatives: hard`` takes, among the tail items outside the anchor's ``neighbourhood``
  nearest in S1 space, the ``k_far`` nearest to it in the method's own space: the places
  where the click-trained space puts items next to a head item that the unbiased
  reference does not. That loss is real (~0.07), but on a dev world it did not help (see
  the README, "Tuning"). Exact FAISS inner-product search; mined once before training,
  each step samples ``triplets_per_step`` of them. ``negatives: disagreement``
  (``DisagreementMiner``) mines from the *current* debiased space every
  ``remine_every`` steps and keeps only triplets that are violated or within the margin.
- Alignment (``debias.align: coral | mmd``, ``visctr.ctr.align``): a batch of head and a
  batch of tail items (the whole catalog's tail, never-shown items included) pulled
  together in the debiased space, the head side detached; ``relational_weight`` adds
  the S1 relational anchor on the same rows. The triplet loss is applied to the
  DebiasNet output of the method's item vectors, so the debiased space inherits the
  unbiased S1 neighbourhoods across the head/tail divide.
- Retrieval uses the gated fusion by default (what the CTR model itself consumes); set
  ``debias.retrieval_vector: debiased`` to export ``d`` alone. ``debias.pt`` holds the
  DebiasNet and Gate weights plus that choice and is loadable with ``weights_only=True``;
  ``DebiasTransform`` (or ``apply_debias``) maps any embedding array with it: retrieval
  evaluation and serving apply the same function.
- ``S3Debias`` is the head as part of the CTR network: it holds the mined triplets and
  computes ``λ·L_triplet`` (``aux_loss``), so the trainer only adds what the net returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visctr.errors import InputError
from visctr.world.head_tail import head_mask

DEBIAS_FORMAT = 1


class DebiasNet(nn.Module):
    """Residual MLP on a visual vector, output L2-normalised."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v + self.fc2(F.relu(self.fc1(v))), dim=-1)


class Gate(nn.Module):
    """Vector gate ``g·v + (1−g)·d``, ``g = sigmoid(W[v, d] + b)``.

    ``W[v, d]`` is computed as ``W_v v + W_d d`` over the two column blocks of ``W`` (one
    ``Linear``, same weights): no concatenated copy, and backward computes an input
    gradient only for ``d`` when ``v`` (a frozen visual vector) needs none.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(
        self, v: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        dim = v.shape[-1]
        w = self.proj.weight
        z = torch.addmm(F.linear(d, w[:, dim:], self.proj.bias), v, w[:, :dim].t())
        if bias is not None:  # the exposure-aware gate's per-row term
            z = z + bias
        g = torch.sigmoid(z)
        return d + g * (v - d)  # = g·v + (1−g)·d


class DebiasHead(nn.Module):
    """DebiasNet + Gate as one unit: ``head(v)`` is the vector the CTR model uses.

    ``detach_debiased`` (a diagnostic, off): the gate sees ``d`` without its gradient, so
    the click loss no longer trains the DebiasNet (only the triplet term does).

    ``n_buckets > 0`` (``debias.gate_exposure``): the gate also sees the row's popularity
    bucket of training impressions (``ctr.pop_buckets`` of them, ``visctr.ctr.stats``),
    as a learned per-dimension term ``E[bucket]`` added to its logits, zero-initialised so
    it starts as the plain gate; the last row, ``n_buckets``, is a query image's (queries
    have no impressions of their own). It can then lean on ``d`` where the logs are thin.
    ``head(v, buckets)`` needs the buckets of the rows.
    """

    detach_debiased = False

    def __init__(self, dim: int, hidden: int = 128, n_buckets: int = 0):
        super().__init__()
        self.net = DebiasNet(dim, hidden)
        self.gate = Gate(dim)
        self.n_buckets = n_buckets
        self.exposure = nn.Embedding(n_buckets + 1, dim) if n_buckets else None
        if self.exposure is not None:
            nn.init.zeros_(self.exposure.weight)

    @property
    def query_bucket(self) -> int:
        """The exposure row of a query image (the last)."""
        return self.n_buckets

    def fuse(
        self, v: torch.Tensor, d: torch.Tensor, buckets: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """The gated fusion of ``v`` and its debiased ``d = net(v)``; ``buckets``: the rows'
        exposure buckets (required with the exposure-aware gate, ignored without)."""
        bias = None
        if self.exposure is not None:
            if buckets is None:
                raise ValueError("the exposure-aware gate needs each row's exposure bucket")
            # an int: one bucket for every row (a query batch), broadcast over the rows
            w = self.exposure.weight
            bias = w[buckets] if isinstance(buckets, int) else self.exposure(buckets)
        return self.gate(v, d.detach() if self.detach_debiased else d, bias)

    def forward(self, v: torch.Tensor, buckets: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.fuse(v, self.net(v), buckets)


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    unit: bool = False,
) -> torch.Tensor:
    """Mean of ``max(0, cos(a, n) − cos(a, p) + margin)`` over rows.

    ``unit``: the rows are already L2-normalised (DebiasNet outputs), so the cosines are
    plain dot products and the three normalisations (and their backward) are skipped."""
    if not unit:
        anchor, positive, negative = (F.normalize(x, dim=-1) for x in (anchor, positive, negative))
    return F.relu(((negative - positive) * anchor).sum(-1) + margin).mean()


@dataclass
class Triplets:
    """Mined candidates, all as item rows: ``pos[i]`` / ``neg[i]`` belong to ``anchors[i]``."""

    anchors: np.ndarray  # int64 [A]
    pos: np.ndarray  # int64 [A, k_neighbours]
    neg: np.ndarray  # int64 [A, k_far]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``n`` triplets (anchor, positive, negative item rows), reproducible per generator."""
        a = torch.randint(len(self.anchors), (n,), generator=generator)
        p = torch.randint(self.pos.shape[1], (n,), generator=generator)
        q = torch.randint(self.neg.shape[1], (n,), generator=generator)
        anchors = torch.from_numpy(self.anchors)
        return anchors[a], torch.from_numpy(self.pos)[a, p], torch.from_numpy(self.neg)[a, q]


class RowPlan(NamedTuple):
    """Where :meth:`S3Debias.apply_plan` reads each row (all int64 index tensors).

    ``uniq``: the distinct item rows of the batch and the triplets, sorted; the head runs
    on ``[queries, item_vectors[uniq]]``. ``keep``: the positions among those that the
    gate runs on (queries and the batch's items; ``None``: all, no triplet rows).
    ``item_at``: each batch row's row among the gated items; ``extra_at``: each triplet
    row's among ``uniq`` (``None`` without triplet rows)."""

    uniq: torch.Tensor
    keep: torch.Tensor | None
    item_at: torch.Tensor
    extra_at: torch.Tensor | None


@dataclass
class DebiasData:
    """What S3's training terms read, built once per run by :func:`debias_data`.

    ``triplets``: static triplets (``negatives: farthest | hard``); ``miner``: a
    :class:`DisagreementMiner` (``negatives: disagreement``) instead; ``head`` / ``tail``:
    the usable head and tail item rows the alignment batches are drawn from (tail: the
    whole catalog's, never-shown items included); ``reference``: unit S1 vectors aligned
    to item rows (the relational anchor)."""

    triplets: Triplets | None = None
    miner: DisagreementMiner | None = None
    head: np.ndarray | None = None
    tail: np.ndarray | None = None
    reference: np.ndarray | None = None


class S3Debias(DebiasHead):
    """The S3 part of a CTR network: the debias head, what trains it and its loss.

    A ``DebiasHead`` (same weights, same state-dict keys, exported the same way) that
    also owns S3's terms: ``λ·L_triplet`` on mined triplets and, when configured, the
    head/tail alignment (``align_weight·L_align``) and the S1 relational anchor
    (``relational_weight·L_relational``) on a batch of head and tail items. The CTR
    trainer adds :meth:`aux_loss` (or what :meth:`aux_term` gives after ``prepare``) to
    the click loss and needs to know nothing about them. ``data=None`` (a loaded model,
    or the capacity control S1+S2+H): no loss.

    Each step's extra rows are, in order: anchors, positives and negatives of
    ``per_step`` triplets (when the triplet term is on), then ``align_batch`` head and
    ``align_batch`` tail rows (when an alignment term is on).
    """

    def __init__(
        self, dim: int, cfg, data: DebiasData | Triplets | None = None, n_buckets: int = 0
    ):
        super().__init__(dim, cfg.hidden, n_buckets)
        if isinstance(data, Triplets):
            data = DebiasData(triplets=data)
        self.data = data
        self.triplets = None if data is None else data.triplets
        self.miner = None if data is None else data.miner
        self.weight = cfg.weight
        self.margin = cfg.margin
        self.per_step = cfg.triplets_per_step
        self.stop_anchor_grad = cfg.stop_anchor_grad
        self.remine_every = cfg.remine_every
        self.align = cfg.align if cfg.align_weight > 0 else "none"
        self.align_weight = cfg.align_weight
        self.relational_weight = cfg.relational_weight
        self.align_batch = cfg.align_batch
        has = data is not None
        self.n_triplet_rows = 3 * self.per_step if has and (self.triplets or self.miner) else 0
        self.n_align_rows = 0
        if has and data.head is not None and (self.align != "none" or self.relational_weight):
            self.n_align_rows = 2 * self.align_batch
        if self.relational_weight and self.n_align_rows:
            if data.reference is None:
                raise ValueError("the relational anchor needs the S1 reference vectors")
            ref = torch.as_tensor(data.reference, dtype=torch.float32)
            self.register_buffer("reference_vectors", ref, persistent=False)
        self.steps = 0  # training steps drawn so far (the miner re-mines on a schedule)

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the parts :meth:`aux_term` reports."""
        out: tuple[str, ...] = ()
        if self.n_triplet_rows:
            out += ("triplet_loss", "triplet_active")
        if self.n_align_rows and self.align != "none":
            out += ("align_loss",)
        if self.n_align_rows and self.relational_weight:
            out += ("relational_loss",)
        return out

    def sample_rows(
        self, generator: torch.Generator, item_vectors: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """This step's extra item rows drawn with ``generator`` (see the class docstring);
        ``None`` without any S3 term. ``item_vectors``: the method's item vectors, which
        the disagreement miner maps through the current DebiasNet when it re-mines."""
        parts = []
        if self.n_triplet_rows:
            if self.miner is not None:
                if item_vectors is None:
                    raise ValueError("negatives='disagreement' mines from the item vectors")
                if self.steps % self.remine_every == 0:
                    self.miner.mine(self.net, item_vectors)
                parts.extend(self.miner.sample(self.per_step, generator))
            else:
                parts.extend(self.triplets.sample(self.per_step, generator))
        if self.n_align_rows:
            m = self.align_batch
            for rows in (self.data.head, self.data.tail):
                pick = torch.randint(len(rows), (m,), generator=generator)
                parts.append(torch.from_numpy(rows)[pick])
        if not parts:
            return None
        self.steps += 1
        return torch.cat(parts)

    def aux_term(
        self, d: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(S3's weighted terms, their unweighted parts)`` from the DebiasNet outputs ``d``
        of the rows :meth:`sample_rows` gave (``rows``: those item rows, which the
        relational anchor reads its S1 vectors by)."""
        from visctr.ctr.align import coral, mmd, relational

        total = d.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        k = self.n_triplet_rows // 3
        if k:
            anchor = d[:k].detach() if self.stop_anchor_grad else d[:k]
            hinge = F.relu(((d[2 * k : 3 * k] - d[k : 2 * k]) * anchor).sum(-1) + self.margin)
            trip = hinge.mean()
            total = total + self.weight * trip
            parts["triplet_loss"] = trip
            parts["triplet_active"] = (hinge > 0).float().mean().detach()
        if self.n_align_rows:
            start, m = 3 * k, self.align_batch
            head, tail = d[start : start + m], d[start + m : start + 2 * m]
            if self.align != "none":
                fn = coral if self.align == "coral" else mmd
                term = fn(head.detach(), tail)  # the exposed side does not move
                total = total + self.align_weight * term
                parts["align_loss"] = term
            if self.relational_weight:
                if rows is None:
                    raise ValueError("the relational anchor needs the extra rows")
                s1 = self.reference_vectors.index_select(0, rows[start : start + 2 * m])
                rel = relational(d[start : start + 2 * m], s1)
                total = total + self.relational_weight * rel
                parts["relational_loss"] = rel
        return total, parts

    def aux_loss(
        self, item_vectors: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """S3's terms on this step's sampled rows (:meth:`aux_term`), ``(None, {})``
        without any. They are taken on the DebiasNet output of the rows of
        ``item_vectors`` (the method's item vectors)."""
        rows = self.sample_rows(generator, item_vectors)
        if rows is None:
            return None, {}
        rows = rows.to(item_vectors.device)
        return self.aux_term(self.net(item_vectors[rows]), rows)

    @staticmethod
    def plan(
        n_queries: int, item_rows: torch.Tensor, extra_rows: torch.Tensor | None = None
    ) -> RowPlan:
        """Where :meth:`apply_plan` reads each row: the index bookkeeping of an S3 batch
        (``torch.unique``, whose output size depends on the data), kept apart from the
        arithmetic so that ``apply_plan`` has only gathers and goes through
        ``torch.compile`` whole. ``extra_rows``: the triplet rows, or ``None``."""
        b = item_rows.shape[0]
        rows = item_rows if extra_rows is None else torch.cat([item_rows, extra_rows])
        uniq, inv = torch.unique(rows, return_inverse=True)
        if extra_rows is None:
            return RowPlan(uniq, None, inv, None)
        in_batch = torch.zeros(uniq.shape[0], dtype=torch.bool, device=uniq.device)
        in_batch[inv[:b]] = True
        gated = torch.cat([torch.ones(n_queries, dtype=torch.bool, device=uniq.device), in_batch])
        at = torch.cumsum(in_batch, 0) - 1  # a distinct batch item's row among the kept
        return RowPlan(uniq, gated.nonzero().squeeze(1), at.index_select(0, inv[:b]), inv[b:])

    def apply_plan(
        self,
        queries: torch.Tensor,
        item_vectors: torch.Tensor,
        plan: RowPlan,
        item_buckets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The S3 part of a CTR batch in one pass over distinct vectors, along ``plan``
        (made by :meth:`plan` from ``item_rows`` and ``extra_rows``).

        Returns the L2-normalised gated fusion of each query vector ``[B, D]`` and of each
        row's item vector ``item_vectors[item_rows]`` ``[B, D]``, and the DebiasNet output
        of ``item_vectors[extra_rows]`` (the triplet rows) or ``None``. Row for row the
        same function as ``normalize(head(v))`` and ``net(v)``: the head is row-wise, so it
        runs once per query row and once per *distinct* item of the batch and the triplets
        (logged batches repeat head items: ~330 distinct items per 1,024 rows on the
        ``small`` world), and the triplet rows share the DebiasNet pass of the batch. The
        gate runs only where the CTR model reads it (queries and the batch's items).
        ``item_buckets``: each item row's exposure bucket (the exposure-aware gate).
        """
        n_q = queries.shape[0]
        v = torch.cat([queries, item_vectors.index_select(0, plan.uniq)])
        d = self.net(v)
        b = None
        if self.exposure is not None:
            if item_buckets is None:
                raise ValueError("the exposure-aware gate needs the items' exposure buckets")
            q_b = torch.full((n_q,), self.query_bucket, dtype=torch.long, device=v.device)
            b = torch.cat([q_b, item_buckets.index_select(0, plan.uniq)])
        if plan.keep is None:
            g = F.normalize(self.fuse(v, d, b), dim=-1)
            return g[:n_q], g[n_q:].index_select(0, plan.item_at), None
        keep = plan.keep
        b = None if b is None else b.index_select(0, keep)
        g = F.normalize(self.fuse(v.index_select(0, keep), d.index_select(0, keep), b), dim=-1)
        gi = g[n_q:].index_select(0, plan.item_at)
        return g[:n_q], gi, d[n_q:].index_select(0, plan.extra_at)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _hard_negatives(
    s1, ref: np.ndarray, method: np.ndarray, anchors: np.ndarray, tails: np.ndarray, cfg
) -> np.ndarray:
    """Per anchor, ``k_far`` tail rows: nearest in ``method`` space, outside the S1 neighbourhood.

    ``s1``: the FAISS index over the tail items' (unit) S1 vectors, ``ref[tails]``.

    With fewer than ``neighbourhood + k_far`` tail items the neighbourhood shrinks (not
    below ``k_neighbours``); a row still short repeats the ones found, and only when every
    tail item is a positive does it fall back to the farthest tail items in S1 space.
    """
    import faiss

    k = min(cfg.k_far, tails.size)
    n_pos = min(cfg.k_neighbours, tails.size)
    # shrink the neighbourhood on small catalogs so k items stay outside it, but never below
    # the positives: a positive must not come back as a negative of the same anchor
    n_nb = max(n_pos, min(cfg.neighbourhood, tails.size - k))
    n_cand = min(tails.size, n_nb + k)  # at most n_nb of them are filtered out
    _, near_s1 = s1.search(ref[anchors], n_nb)
    _, far_s1 = s1.search(-ref[anchors], k)
    mt = faiss.IndexFlatIP(method.shape[1])
    mt.add(method[tails])
    _, cand = mt.search(method[anchors], n_cand)
    out = np.empty((anchors.size, k), dtype=np.int64)
    for i in range(anchors.size):
        keep = cand[i][~np.isin(cand[i], near_s1[i])][:k]
        out[i] = np.resize(keep, k) if keep.size else far_s1[i]
    return tails[out]


def mine_triplets(
    reference: np.ndarray,
    usable: np.ndarray,
    item_counts: np.ndarray,
    cfg,
    method: np.ndarray | None = None,
) -> Triplets:
    """Mine head→tail triplets with the S1 reference (exact FAISS search).

    ``reference``: float32 [n_items, D] S1 vectors aligned to item rows; ``method``: the
    method's item vectors, same rows (needed for ``negatives: hard``); ``usable``: items
    with both a reference and a method vector.
    """
    import faiss

    is_head = head_mask(item_counts, cfg.head_share)
    head, tail = is_head & usable, ~is_head & usable
    anchors, tails = np.flatnonzero(head), np.flatnonzero(tail)
    if anchors.size == 0 or tails.size < 2:
        raise InputError(
            f"debias: need head and tail items with vectors to mine triplets, found "
            f"{anchors.size} head and {tails.size} tail items; is the training "
            "log too small or head_share too low?"
        )
    ref = _unit(reference)
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref[tails])
    _, near = index.search(ref[anchors], min(cfg.k_neighbours, tails.size))
    if cfg.negatives == "hard":
        if method is None:
            raise ValueError("negatives='hard' needs the method's item vectors")
        neg = _hard_negatives(index, ref, _unit(method), anchors, tails, cfg)
    else:
        _, far = index.search(-ref[anchors], min(cfg.k_far, tails.size))
        neg = tails[far]
    return Triplets(anchors.astype(np.int64), tails[near].astype(np.int64), neg.astype(np.int64))


class DisagreementMiner:
    """Triplets where the current debiased space disagrees with S1 (``negatives:
    disagreement``), mined again from the DebiasNet as it trains.

    Fixed at construction (exact FAISS search in S1 space over the usable tail items):
    each head anchor's ``k_neighbours`` nearest tail items (positive candidates) and its
    ``neighbourhood`` nearest (never negatives). :meth:`mine` maps the anchors and tail
    items through the current DebiasNet and, per anchor, takes as positive the S1
    neighbour farthest from it in the debiased space and as negatives the ``k_far`` tail
    items nearest to it there that lie outside its S1 neighbourhood; it keeps only the
    triplets whose hinge ``cos(a, n) − cos(a, p) + margin`` is positive (violated or
    within the margin), so each one has a gradient when mined. ``active_share``: the
    share of candidate triplets kept at the last mining.

    ``cfg.mirror``: a second miner with the roles swapped (tail anchors, head positives
    and negatives) mines beside it; the pool is both directions' kept triplets.
    """

    def __init__(
        self,
        reference: np.ndarray,
        anchors: np.ndarray,
        tails: np.ndarray,
        cfg,
        mirror: bool | None = None,
    ):
        import faiss

        mirror = cfg.mirror if mirror is None else mirror
        # the mirror direction: the same mining with anchors and candidates swapped
        self.mirror = DisagreementMiner(reference, tails, anchors, cfg, False) if mirror else None
        self.anchors, self.tails = anchors.astype(np.int64), tails.astype(np.int64)
        self.margin = cfg.margin
        self.k_far = min(cfg.k_far, tails.size)
        ref = _unit(reference)
        index = faiss.IndexFlatIP(ref.shape[1])
        index.add(ref[tails])
        n_pos = min(cfg.k_neighbours, tails.size)
        # as in _hard_negatives: shrink the neighbourhood on small catalogs, never below
        # the positives, so that k_far items stay outside it
        self.n_nb = max(n_pos, min(cfg.neighbourhood, tails.size - self.k_far))
        _, near = index.search(ref[anchors], self.n_nb)  # positions among the tails
        self.near_pos = near[:, :n_pos]
        self.near = near
        self.pool: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.candidates: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.kept: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.active_share = float("nan")

    def mine(self, net: nn.Module, item_vectors: torch.Tensor) -> None:
        """Mine from ``net`` (the DebiasNet) applied to the rows of ``item_vectors``."""
        import faiss

        with torch.no_grad():
            rows = torch.from_numpy(np.concatenate([self.anchors, self.tails]))
            d = net(item_vectors[rows.to(item_vectors.device)]).float().cpu().numpy()
        da, dt = _unit(d[: self.anchors.size]), _unit(d[self.anchors.size :])
        # positive: the S1 neighbour farthest from the anchor in the debiased space
        sim_pos = np.einsum("ad,akd->ak", da, dt[self.near_pos])
        pos = self.near_pos[np.arange(self.anchors.size), sim_pos.argmin(1)]
        index = faiss.IndexFlatIP(dt.shape[1])
        index.add(dt)
        n_cand = min(self.tails.size, self.n_nb + self.k_far)
        sim, cand = index.search(da, n_cand)
        neg = np.empty((self.anchors.size, self.k_far), dtype=np.int64)
        neg_sim = np.empty((self.anchors.size, self.k_far), dtype=np.float32)
        for i in range(self.anchors.size):
            ok = ~np.isin(cand[i], self.near[i])
            c, sc = cand[i][ok][: self.k_far], sim[i][ok][: self.k_far]
            if c.size == 0:  # every candidate is an S1 neighbour: no negative here
                c, sc = cand[i][-1:], np.full(1, -np.inf, np.float32)
            neg[i], neg_sim[i] = np.resize(c, self.k_far), np.resize(sc, self.k_far)
        s_pos = (da * dt[pos]).sum(1)
        hinge = neg_sim - s_pos[:, None] + self.margin  # [A, k_far]
        a = np.repeat(np.arange(self.anchors.size), self.k_far)
        p = np.repeat(pos, self.k_far)
        n = neg.reshape(-1)
        keep = hinge.reshape(-1) > 0
        candidates = (self.anchors[a], self.tails[p], self.tails[n])
        kept = (self.anchors[a[keep]], self.tails[p[keep]], self.tails[n[keep]])
        if self.mirror is not None:
            self.mirror.mine(net, item_vectors)
            m_cand, m_keep = self.mirror.candidates, self.mirror.kept
            n_kept = len(kept[0]) + len(m_keep[0])
            self.active_share = n_kept / (len(candidates[0]) + len(m_cand[0]))
            candidates = tuple(np.concatenate(x) for x in zip(candidates, m_cand, strict=True))
            kept = tuple(np.concatenate(x) for x in zip(kept, m_keep, strict=True))
        else:
            self.active_share = float(keep.mean())
        self.candidates, self.kept = candidates, kept
        if len(kept[0]):
            self.pool = kept
        else:  # nothing to teach: the candidates, whose hinge is 0 (no gradient), keep
            self.pool = self.candidates  # the step's layout until a mining finds some

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``n`` triplets drawn with replacement from the last mining's pool."""
        if self.pool is None:
            raise RuntimeError("DisagreementMiner.sample before mine")
        pick = torch.randint(len(self.pool[0]), (n,), generator=generator)
        return tuple(torch.from_numpy(x)[pick] for x in self.pool)


def debias_data(
    reference: np.ndarray | None,
    usable: np.ndarray,
    item_counts: np.ndarray,
    cfg,
    method: np.ndarray | None = None,
) -> DebiasData | None:
    """What trains the S3 head under ``cfg`` (``None``: the click loss alone).

    ``reference``: S1 vectors aligned to item rows (needed for triplets and the relational
    anchor); ``usable``: items with the vectors the terms read; ``item_counts``: fit-part
    training impressions (the head/tail split); ``method``: the method's item vectors
    (``negatives: hard``)."""
    if not (cfg.needs_reference or cfg.aligns):
        return None
    if cfg.needs_reference and reference is None:
        raise ValueError("debias: the triplet term and the relational anchor need S1 vectors")
    is_head = head_mask(item_counts, cfg.head_share)
    head, tail = np.flatnonzero(is_head & usable), np.flatnonzero(~is_head & usable)
    if head.size == 0 or tail.size < 2:
        raise InputError(
            f"debias: need head and tail items with vectors, found {head.size} head and "
            f"{tail.size} tail items; is the training log too small or head_share too low?"
        )
    data = DebiasData()
    if cfg.triplets and cfg.negatives == "disagreement":
        data.miner = DisagreementMiner(reference, head, tail, cfg)
    elif cfg.triplets:
        data.triplets = mine_triplets(reference, usable, item_counts, cfg, method)
    if cfg.aligns:
        data.head, data.tail = head.astype(np.int64), tail.astype(np.int64)
        if cfg.relational_weight > 0:
            data.reference = _unit(reference)
    return data


def export_debias(
    head: DebiasHead,
    cfg,
    dim: int,
    path: Path,
    item_ids: np.ndarray | None = None,
    item_buckets: np.ndarray | None = None,
    embeddings_encoder: str | None = None,
) -> None:
    """Write ``debias.pt``: weights + the config needed to rebuild and apply them. An
    exposure-aware head (``n_buckets > 0``) also stores each training item's id and
    exposure bucket (``item_ids``, ``item_buckets``), which serving looks items up by.
    ``embeddings_encoder``: the digest of the encoder whose embeddings it was trained on
    (read back as :attr:`DebiasTransform.embeddings_encoder`)."""
    from visctr.io import save_torch

    blob = {
        "format": DEBIAS_FORMAT,
        "dim": dim,
        "hidden": cfg.hidden,
        "retrieval_vector": cfg.retrieval_vector,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
    }
    if embeddings_encoder is not None:
        blob["embeddings_encoder"] = embeddings_encoder
    if head.n_buckets:
        if item_ids is None or item_buckets is None or len(item_ids) != len(item_buckets):
            raise ValueError("an exposure-aware head is exported with its items' buckets")
        blob["exposure_buckets"] = head.n_buckets
        blob["item_ids"] = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
        blob["item_buckets"] = torch.as_tensor(np.asarray(item_buckets, dtype=np.int64))
    save_torch(blob, path)


@dataclass
class ExposureTable:
    """The training items' exposure buckets of an exposure-aware ``debias.pt``, by item id
    (an id it does not hold was never shown in training: bucket 0)."""

    ids: np.ndarray  # int64, sorted
    buckets: np.ndarray  # int64, aligned to ids

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise InputError(
                f"exposure-aware debias head: item ids must be integers, got {ids.dtype}"
            )
        out = np.zeros(len(ids), dtype=np.int64)
        if len(self.ids):
            at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
            hit = self.ids[at] == ids
            out[hit] = self.buckets[at[hit]]
        return out


def load_debias(path: Path) -> tuple[DebiasHead, str]:
    """The exported debias head and which vector retrieval uses (``gated``/``debiased``)."""
    head, mode, _, _ = load_debias_full(path)
    return head, mode


def load_debias_full(path: Path) -> tuple[DebiasHead, str, ExposureTable | None, str | None]:
    """:func:`load_debias`, the exposure table of an exposure-aware head (else ``None``)
    and the digest of the encoder whose embeddings it was trained on (``None`` if the file
    does not record it)."""
    from visctr.io import check_state_dict, field, load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != DEBIAS_FORMAT:
        raise InputError(f"{path}: not a visctr debias export (format {DEBIAS_FORMAT})")
    dim = field(blob, "dim", path, int, lo=1, hi=65_536)
    hidden = field(blob, "hidden", path, int, lo=1, hi=65_536)
    mode = field(blob, "retrieval_vector", path, str, choices=("gated", "debiased"))
    made_by = None
    if "embeddings_encoder" in blob:
        made_by = field(blob, "embeddings_encoder", path, str, check=lambda v: 0 < len(v) <= 128)
    n_buckets = 0
    table = None
    if "exposure_buckets" in blob:
        n_buckets = field(blob, "exposure_buckets", path, int, lo=1, hi=1024)
        ids, buckets = blob.get("item_ids"), blob.get("item_buckets")
        ok = all(
            isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1
            for t in (ids, buckets)
        )
        if not ok or ids.shape != buckets.shape:
            raise InputError(f"{path}: item_ids / item_buckets must be two int64 vectors alike")
        b = buckets.numpy()
        if b.size and (b.min() < 0 or b.max() >= n_buckets):
            raise InputError(f"{path}: item_buckets must lie in [0, {n_buckets})")
        order = np.argsort(ids.numpy(), kind="stable")
        table = ExposureTable(ids.numpy()[order], b[order])
    with torch.device("meta"):  # shapes only: nothing allocated before the weights fit
        check_state_dict(
            field(blob, "state_dict", path, dict),
            DebiasHead(dim, hidden, n_buckets),
            path,
            "weights",
        )
    head = DebiasHead(dim, hidden, n_buckets)
    head.load_state_dict(blob["state_dict"])
    head.eval()
    return head, mode, table, made_by


class DebiasServing(nn.Module):
    """The vector retrieval uses, as one module: the gated fusion ``head(v)`` or the
    debiased vector ``head.net(v)`` alone, L2-normalised (traceable for serving).

    An exposure-aware head's gate reads each row's exposure bucket: ``buckets`` (item
    rows), else ``queries=True`` fixes the query row for every input (the traced query
    side of an export)."""

    def __init__(self, head: DebiasHead, mode: str, queries: bool = False) -> None:
        super().__init__()
        if mode not in ("gated", "debiased"):
            raise ValueError(f"mode must be 'gated' or 'debiased', got {mode!r}")
        self.head = head
        self.gated = mode == "gated"
        self.bucket = head.query_bucket if queries and head.n_buckets else None

    def forward(self, v: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        if not self.gated:
            return F.normalize(self.head.net(v), dim=-1)
        if self.bucket is not None:
            return F.normalize(self.head(v, self.bucket), dim=-1)
        return F.normalize(self.head(v, buckets), dim=-1)


class DebiasTransform:
    """An exported ``debias.pt`` as a function on embedding arrays ``[n, D] → [n, D]``.

    What ``visctr.eval.retrieval.evaluate_retrieval`` takes as its ``transform`` and what
    serving applies to the item vectors: L2-normalised float32 vectors, the gated fusion
    (default, what the CTR model uses) or the debiased vector alone, as chosen at training
    (``mode`` overrides). The file is read once.

    ``items(vectors, ids)`` maps catalog items and ``queries(vectors)`` query images; a
    head with the exposure-aware gate (``debias.gate_exposure``) needs to know which, as
    its gate reads the item's exposure bucket (by id, from the file; an id it does not
    hold was never shown: bucket 0) or the query row. Calling the transform itself,
    ``transform(vectors)``, is for heads without it and is refused for one with it.
    """

    def __init__(self, path: Path, mode: str | None = None, batch_size: int = 65_536):
        self.path = Path(path)
        head, saved_mode, self.table, self.embeddings_encoder = load_debias_full(self.path)
        self.mode = mode or saved_mode
        self.module = DebiasServing(head, self.mode).eval()
        self.query_module = DebiasServing(head, self.mode, queries=True).eval()
        self.dim = head.gate.proj.out_features
        self.batch_size = batch_size

    def check_embeddings(self, embeddings: Path) -> None:
        """Refuse an embeddings folder made by another encoder than the one whose
        embeddings this head was trained on (``visctr.embeddings.check_trained_on``)."""
        from visctr.embeddings import check_trained_on

        check_trained_on(embeddings, self.embeddings_encoder, self.path)

    @property
    def exposure_aware(self) -> bool:
        """Whether the gate reads exposure (``items`` and ``queries`` differ)."""
        return self.table is not None

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        if self.exposure_aware:
            raise InputError(
                f"{self.path}: this debias head's gate reads exposure "
                "(debias.gate_exposure): map items with .items(vectors, ids) and query "
                "images with .queries(vectors)"
            )
        return self._map(self.module, vectors, None)

    def items(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Catalog items' vectors ``[n, D]`` with their item ids ``[n]``."""
        if len(ids) != len(vectors):
            raise InputError(f"{self.path}: {len(vectors)} item vectors but {len(ids)} ids")
        buckets = self.table.lookup(ids) if self.table is not None else None
        return self._map(self.module, vectors, buckets)

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Query images' vectors ``[n, D]``."""
        return self._map(self.query_module, vectors, None)

    def _map(self, module: nn.Module, vectors: np.ndarray, buckets) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise InputError(
                f"{self.path}: expects vectors of width {self.dim}, got shape {v.shape}"
            )
        out = np.empty_like(v)
        bs = self.batch_size
        with torch.no_grad():
            for s in range(0, v.shape[0], bs):
                x = torch.from_numpy(np.ascontiguousarray(v[s : s + bs]))
                b = None if buckets is None else torch.from_numpy(buckets[s : s + bs])
                out[s : s + bs] = module(x, b).numpy()
        return out


def debias_transform(path: Path, mode: str | None = None) -> DebiasTransform:
    """The retrieval transform of a trained S3 model's ``debias.pt`` (see ``DebiasTransform``)."""
    return DebiasTransform(path, mode)


def apply_debias(
    debias_path: Path, vectors: np.ndarray, batch_size: int = 65_536, mode: str | None = None
) -> np.ndarray:
    """Map an embedding array ``[n, D]`` through the exported debias head (one call of
    ``DebiasTransform``)."""
    return DebiasTransform(debias_path, mode, batch_size)(vectors)
