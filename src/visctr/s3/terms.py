"""S3's training terms as part of a CTR network, and the rows they read.

``S3Debias`` is the debias head (:class:`visctr.s3.net.DebiasHead`, same weights) that also
owns S3's loss: ``weight·L_triplet`` on mined triplets (:mod:`visctr.s3.mining`) and, when
configured, the head/tail alignment (``align: coral | mmd``, ``align_weight``) and the S1
relational anchor (``relational_weight``) on a batch of head and a batch of tail items (the
whole catalog's tail, never-shown items included), the head side detached. The losses
themselves are pure functions in :mod:`visctr.losses`. The triplet loss is applied to the
DebiasNet output of the method's item vectors, so the debiased space inherits the unbiased
S1 neighbourhoods across the head/tail divide.

:func:`debias_data` builds, once per run, what the terms read (:class:`DebiasData`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from visctr.errors import InputError
from visctr.losses.coral import coral
from visctr.losses.mmd import mmd
from visctr.losses.relational import relational
from visctr.losses.triplet import triplet_hinge
from visctr.s3.config import DebiasConfig
from visctr.s3.mining import DisagreementMiner, Triplets, mine_triplets, unit_rows
from visctr.s3.net import DebiasHead
from visctr.world.head_tail import head_mask


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

    A ``DebiasHead`` (same weights, same state-dict keys, exported the same way) that also
    owns S3's terms under ``cfg`` (the run's ``ctr.debias``, read where each term is
    taken): ``weight·L_triplet`` on mined triplets and, when configured, the head/tail
    alignment (``align_weight·L_align``) and the S1 relational anchor
    (``relational_weight·L_relational``) on a batch of head and tail items. ``data=None``
    (a loaded model, or the capacity control S1+S2+H): no loss.

    A CTR network asks for S3 in two calls per training step: :meth:`prepare` (eager: this
    step's draws and the row plan, whose sizes depend on the data) and :meth:`apply`
    (gathers and arithmetic only, so ``torch.compile`` takes it whole), which returns the
    gated query and item vectors together with S3's weighted term and its parts. The CTR
    trainer adds that term to the click loss and needs to know nothing about it.

    Each step's extra rows are, in order: anchors, positives and negatives of
    ``cfg.triplets_per_step`` triplets (when the triplet term is on), then
    ``cfg.align_batch`` head and ``cfg.align_batch`` tail rows (when an alignment term is on).
    """

    def __init__(
        self,
        dim: int,
        cfg: DebiasConfig,
        data: DebiasData | Triplets | None = None,
        n_buckets: int = 0,
    ):
        super().__init__(dim, cfg.hidden, n_buckets)
        if isinstance(data, Triplets):
            data = DebiasData(triplets=data)
        self.cfg = cfg
        self.data = data
        self.triplets = None if data is None else data.triplets
        self.miner = None if data is None else data.miner
        has = data is not None
        on = has and (self.triplets or self.miner)
        self.n_triplet_rows = 3 * cfg.triplets_per_step if on else 0
        self.n_align_rows = (
            2 * cfg.align_batch if has and data.head is not None and cfg.aligns else 0
        )
        if cfg.relational_weight and self.n_align_rows:
            if data.reference is None:
                raise ValueError("the relational anchor needs the S1 reference vectors")
            ref = torch.as_tensor(data.reference, dtype=torch.float32)
            self.register_buffer("reference_vectors", ref, persistent=False)
        self.steps = 0  # training steps drawn so far (the miner re-mines on a schedule)

    @property
    def align_loss(self):
        """The alignment loss of ``cfg.align`` (``None``: off, or its weight is 0)."""
        if self.cfg.align == "none" or self.cfg.align_weight <= 0:
            return None
        return coral if self.cfg.align == "coral" else mmd

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the parts :meth:`aux_term` reports."""
        out: tuple[str, ...] = ()
        if self.n_triplet_rows:
            out += ("triplet_loss", "triplet_active")
        if self.n_align_rows and self.align_loss is not None:
            out += ("align_loss",)
        if self.n_align_rows and self.cfg.relational_weight:
            out += ("relational_loss",)
        return out

    def prepare(
        self,
        n_queries: int,
        item_rows: torch.Tensor,
        generator: torch.Generator,
        item_vectors: torch.Tensor,
    ) -> RowPlan:
        """The data-dependent part of a training step, run eagerly: this step's extra rows
        drawn with ``generator`` (:meth:`sample_rows`) and the row plan of the batch's
        ``n_queries`` query rows, its ``item_rows`` and those (:meth:`plan`)."""
        rows = self.sample_rows(generator, item_vectors)
        extra = None if rows is None else rows.to(item_rows.device)
        return self.plan(n_queries, item_rows, extra)

    def apply(
        self,
        queries: torch.Tensor,
        item_vectors: torch.Tensor,
        plan: RowPlan,
        item_buckets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
        """S3 in a CTR batch along ``plan`` (:meth:`prepare`, or :meth:`plan` of the batch
        alone): the normalised gated query vectors ``[B, D]``, the item rows' ``[B, D]``,
        and S3's weighted term with its unweighted parts (:meth:`aux_term`; ``None, {}``
        when the plan has no extra rows)."""
        q, i, d = self.apply_plan(queries, item_vectors, plan, item_buckets)
        if d is None:
            return q, i, None, {}
        rows = plan.uniq.index_select(0, plan.extra_at)  # the extra rows, in draw order
        return q, i, *self.aux_term(d, rows)

    def sample_rows(
        self, generator: torch.Generator, item_vectors: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """This step's extra item rows drawn with ``generator`` (see the class docstring);
        ``None`` without any S3 term. ``item_vectors``: the method's item vectors, which
        the disagreement miner maps through the current DebiasNet when it re-mines."""
        cfg = self.cfg
        parts = []
        if self.n_triplet_rows:
            if self.miner is not None:
                if item_vectors is None:
                    raise ValueError("negatives='disagreement' mines from the item vectors")
                if self.steps % cfg.remine_every == 0:
                    self.miner.mine(self.net, item_vectors)
                parts.extend(self.miner.sample(cfg.triplets_per_step, generator))
            else:
                parts.extend(self.triplets.sample(cfg.triplets_per_step, generator))
        if self.n_align_rows:
            m = cfg.align_batch
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
        relational anchor reads its S1 vectors by).

        ``cfg.weight·L_triplet + cfg.align_weight·L_align + cfg.relational_weight·L_rel``,
        each term present when on; the losses are :mod:`visctr.losses`' pure functions."""
        cfg = self.cfg
        total = d.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        k = self.n_triplet_rows // 3
        if k:
            anchor = d[:k].detach() if cfg.stop_anchor_grad else d[:k]
            hinge = triplet_hinge(anchor, d[k : 2 * k], d[2 * k : 3 * k], cfg.margin, unit=True)
            trip = hinge.mean()
            total = total + cfg.weight * trip
            parts["triplet_loss"] = trip
            parts["triplet_active"] = (hinge > 0).float().mean().detach()
        if self.n_align_rows:
            start, m = 3 * k, cfg.align_batch
            head, tail = d[start : start + m], d[start + m : start + 2 * m]
            align = self.align_loss
            if align is not None:
                term = align(head.detach(), tail)  # the exposed side does not move
                total = total + cfg.align_weight * term
                parts["align_loss"] = term
            if cfg.relational_weight:
                if rows is None:
                    raise ValueError("the relational anchor needs the extra rows")
                s1 = self.reference_vectors.index_select(0, rows[start : start + 2 * m])
                rel = relational(d[start : start + 2 * m], s1)
                total = total + cfg.relational_weight * rel
                parts["relational_loss"] = rel
        return total, parts

    def aux_loss(
        self, item_vectors: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """S3's terms on this step's sampled rows (:meth:`aux_term`), ``(None, {})``
        without any, for a network that does not use :meth:`apply`. They are taken on the
        DebiasNet output of the rows of ``item_vectors`` (the method's item vectors)."""
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


def debias_data(
    reference: np.ndarray | None,
    usable: np.ndarray,
    item_counts: np.ndarray,
    cfg: DebiasConfig,
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
            data.reference = unit_rows(reference)
    return data
