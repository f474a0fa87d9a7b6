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
  each step samples ``triplets_per_step`` of them. The triplet loss is applied to the
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

    def forward(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        dim = v.shape[-1]
        w = self.proj.weight
        z = torch.addmm(F.linear(d, w[:, dim:], self.proj.bias), v, w[:, :dim].t())
        g = torch.sigmoid(z)
        return d + g * (v - d)  # = g·v + (1−g)·d


class DebiasHead(nn.Module):
    """DebiasNet + Gate as one unit: ``head(v)`` is the vector the CTR model uses.

    ``detach_debiased`` (a diagnostic, off): the gate sees ``d`` without its gradient, so
    the click loss no longer trains the DebiasNet (only the triplet term does).
    """

    detach_debiased = False

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.net = DebiasNet(dim, hidden)
        self.gate = Gate(dim)

    def fuse(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The gated fusion of ``v`` and its debiased ``d = net(v)``."""
        return self.gate(v, d.detach() if self.detach_debiased else d)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.fuse(v, self.net(v))


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


class S3Debias(DebiasHead):
    """The S3 part of a CTR network: the debias head, its mined triplets and their loss.

    A ``DebiasHead`` (same weights, same state-dict keys, exported the same way) that
    also owns ``λ·L_triplet``: the CTR trainer adds :meth:`aux_loss` to the click loss and
    needs to know nothing about triplets. ``triplets=None`` (a loaded model): no loss.
    """

    def __init__(self, dim: int, cfg, triplets: Triplets | None = None):
        super().__init__(dim, cfg.hidden)
        self.triplets = triplets
        self.weight = cfg.weight
        self.margin = cfg.margin
        self.per_step = cfg.triplets_per_step

    def sample_rows(self, generator: torch.Generator) -> torch.Tensor | None:
        """The item rows of ``per_step`` triplets drawn with ``generator``: anchors, then
        positives, then negatives (``[3·per_step]``); ``None`` without triplets."""
        if self.triplets is None:
            return None
        return torch.cat(self.triplets.sample(self.per_step, generator))

    def triplet_term(self, d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(λ·L_triplet, {"triplet_loss": L_triplet})`` from the DebiasNet outputs ``d``
        of the rows :meth:`sample_rows` gave."""
        k = self.per_step
        trip = triplet_loss(d[:k], d[k : 2 * k], d[2 * k :], self.margin, unit=True)
        return self.weight * trip, {"triplet_loss": trip}

    def aux_loss(
        self, item_vectors: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """``(λ·L_triplet, {"triplet_loss": L_triplet})`` on ``per_step`` sampled triplets.

        The triplet loss is taken on the DebiasNet output of the rows of ``item_vectors``
        (the method's item vectors), so the debiased space learns the S1 neighbourhoods.
        """
        rows = self.sample_rows(generator)
        if rows is None:
            return None, {}
        return self.triplet_term(self.net(item_vectors[rows.to(item_vectors.device)]))

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
        self, queries: torch.Tensor, item_vectors: torch.Tensor, plan: RowPlan
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
        """
        n_q = queries.shape[0]
        v = torch.cat([queries, item_vectors.index_select(0, plan.uniq)])
        d = self.net(v)
        if plan.keep is None:
            g = F.normalize(self.fuse(v, d), dim=-1)
            return g[:n_q], g[n_q:].index_select(0, plan.item_at), None
        keep = plan.keep
        g = F.normalize(self.fuse(v.index_select(0, keep), d.index_select(0, keep)), dim=-1)
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


def export_debias(head: DebiasHead, cfg, dim: int, path: Path) -> None:
    """Write ``debias.pt``: weights + the config needed to rebuild and apply them."""
    from visctr.io import save_torch

    save_torch(
        {
            "format": DEBIAS_FORMAT,
            "dim": dim,
            "hidden": cfg.hidden,
            "retrieval_vector": cfg.retrieval_vector,
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        },
        path,
    )


def load_debias(path: Path) -> tuple[DebiasHead, str]:
    """The exported debias head and which vector retrieval uses (``gated``/``debiased``)."""
    from visctr.io import check_state_dict, field, load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != DEBIAS_FORMAT:
        raise InputError(f"{path}: not a visctr debias export (format {DEBIAS_FORMAT})")
    dim = field(blob, "dim", path, int, lo=1, hi=65_536)
    hidden = field(blob, "hidden", path, int, lo=1, hi=65_536)
    mode = field(blob, "retrieval_vector", path, str, choices=("gated", "debiased"))
    with torch.device("meta"):  # shapes only: nothing allocated before the weights fit
        check_state_dict(
            field(blob, "state_dict", path, dict), DebiasHead(dim, hidden), path, "weights"
        )
    head = DebiasHead(dim, hidden)
    head.load_state_dict(blob["state_dict"])
    head.eval()
    return head, mode


class DebiasServing(nn.Module):
    """The vector retrieval uses, as one module: the gated fusion ``head(v)`` or the
    debiased vector ``head.net(v)`` alone, L2-normalised (traceable for serving)."""

    def __init__(self, head: DebiasHead, mode: str) -> None:
        super().__init__()
        if mode not in ("gated", "debiased"):
            raise ValueError(f"mode must be 'gated' or 'debiased', got {mode!r}")
        self.head = head
        self.gated = mode == "gated"

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        y = self.head(v) if self.gated else self.head.net(v)
        return F.normalize(y, dim=-1)


class DebiasTransform:
    """An exported ``debias.pt`` as a function on embedding arrays ``[n, D] → [n, D]``.

    What ``visctr.eval.retrieval.evaluate_retrieval`` takes as its ``transform`` and what
    serving applies to the item vectors: L2-normalised float32 vectors, the gated fusion
    (default, what the CTR model uses) or the debiased vector alone, as chosen at training
    (``mode`` overrides). The file is read once.
    """

    def __init__(self, path: Path, mode: str | None = None, batch_size: int = 65_536):
        self.path = Path(path)
        head, saved_mode = load_debias(self.path)
        self.mode = mode or saved_mode
        self.module = DebiasServing(head, self.mode).eval()
        self.dim = head.gate.proj.out_features
        self.batch_size = batch_size

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
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
                out[s : s + bs] = self.module(x).numpy()
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
