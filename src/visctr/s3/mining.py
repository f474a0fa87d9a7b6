"""S3's triplets, mined with the S1 embeddings as the unbiased reference (our choice; the
paper gives only the outline).

Anchor = a head item (top ``head_share`` of items by fit-part training impressions, the one
head/tail rule of ``visctr.world.head_tail``); positive = a tail item among its
``k_neighbours`` nearest in S1 space; negative = a tail item far from it in S1 space: by
default (``negatives: farthest``) among its ``k_far`` farthest. ``negatives: hard`` takes,
among the tail items outside the anchor's ``neighbourhood`` nearest in S1 space, the
``k_far`` nearest to it in the method's own space: the places where the click-trained space
puts items next to a head item that the unbiased reference does not. Exact FAISS
inner-product search; mined once before training (:func:`mine_triplets`), each step samples
``triplets_per_step`` of them. ``negatives: disagreement`` (:class:`DisagreementMiner`)
mines from the *current* debiased space every ``remine_every`` steps and keeps only
triplets that are violated or within the margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from visctr.errors import InputError
from visctr.s3.config import DebiasConfig
from visctr.world.head_tail import head_mask


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


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _hard_negatives(
    s1,
    ref: np.ndarray,
    method: np.ndarray,
    anchors: np.ndarray,
    tails: np.ndarray,
    cfg: DebiasConfig,
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
    cfg: DebiasConfig,
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
    ref = unit_rows(reference)
    index = faiss.IndexFlatIP(ref.shape[1])
    index.add(ref[tails])
    _, near = index.search(ref[anchors], min(cfg.k_neighbours, tails.size))
    if cfg.negatives == "hard":
        if method is None:
            raise ValueError("negatives='hard' needs the method's item vectors")
        neg = _hard_negatives(index, ref, unit_rows(method), anchors, tails, cfg)
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
        cfg: DebiasConfig,
        mirror: bool | None = None,
    ):
        import faiss

        mirror = cfg.mirror if mirror is None else mirror
        # the mirror direction: the same mining with anchors and candidates swapped
        self.mirror = DisagreementMiner(reference, tails, anchors, cfg, False) if mirror else None
        self.anchors, self.tails = anchors.astype(np.int64), tails.astype(np.int64)
        self.margin = cfg.margin
        self.k_far = min(cfg.k_far, tails.size)
        ref = unit_rows(reference)
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
        da, dt = unit_rows(d[: self.anchors.size]), unit_rows(d[self.anchors.size :])
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
