"""Representational exposure bias: how much an embedding space is shaped by exposure.

The S1 self-supervised embeddings never saw an impression, so their geometry is the
unbiased reference. A space trained on the click log can drift from it where the log is
thin: tail items get fewer gradient updates, or get pulled toward popular items.

- ``neighbour_overlap``: per item, the share of its k nearest neighbours (cosine, self
  excluded) that the space and the reference agree on. 1.0 is the same neighbourhood;
  an unrelated space gives about ``k / (n - 1)``.
- ``representation_bias``: an encoder's summary. A space biased by exposure agrees with
  the reference less for tail items than for head items (``overlap_tail <
  overlap_head``), and its agreement rises with the item's training impressions
  (``overlap_vs_impressions``, a Spearman correlation with ``log1p(impressions)``,
  positive).
- ``exposure_probe_auc``: held-out ROC AUC of a logistic-regression probe that predicts
  head vs tail from the unit vector alone. Near 0.5 means the space does not encode
  "headness"; well above 0.5 means popularity can be read off the vector.
- ``ctr_head_tail``: the CTR side of the bias. A CTR model's random-exposure AUC and
  calibration on head items and on tail items, and optionally the difference of its
  head − tail AUC gap from a reference model's, with a paired bootstrap CI over queries.
- ``selection_bias_gap``: the selection-bias gap Δ of an encoder on the uniform retrieval
  queries, (encoder's head − tail HR@10) − (S1's head − tail HR@10), with a paired
  bootstrap CI over queries. S1's own gap is subtracted because "head" is what the
  legacy policy shows, and that already tilts HR without any click.

All functions are pure (arrays in, numbers out); NaN marks an undefined value, as in
:mod:`visctr.metrics`.
"""

from __future__ import annotations

import numpy as np

from visctr.errors import InputError
from visctr.eval.retrieval import _faiss_gpus, normalize
from visctr.metrics import _average_ranks, auc

__all__ = [
    "ctr_head_tail",
    "exposure_probe_auc",
    "neighbour_overlap",
    "representation_bias",
    "selection_bias_gap",
    "spearman",
]

_BATCH = 4096  # queries per FAISS search: bounds the [batch, k + 1] results and FAISS's work


def _check_spaces(space: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(space), np.asarray(reference)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"space and reference must be 2-D [items, dim], got shapes {a.shape} and {b.shape}"
        )
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"space and reference differ in items: {a.shape[0]} vs {b.shape[0]} rows; "
            "align both to the same catalog rows"
        )
    return a, b


def _neighbours(index, vecs: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k nearest other rows of each query row ``[len(queries), k]``: search k + 1 and
    drop the query itself, or the last hit when ties or duplicates pushed it out."""
    _, idx = index.search(vecs[queries], k + 1)
    is_self = idx == queries[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.arange(k + 1)[None, :] != drop[:, None]
    return idx[keep].reshape(len(queries), k)


def neighbour_overlap(
    space: np.ndarray, reference: np.ndarray, k: int = 20, rows: np.ndarray | None = None
) -> np.ndarray:
    """Per query row (``rows``, default all), the share of its k nearest other items that
    ``space`` and ``reference`` agree on, by cosine similarity over all rows. ``k`` is
    clipped to ``n - 1``; the two arrays may differ in width."""
    import faiss

    a, b = _check_spaces(space, reference)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"neighbour overlap needs at least 2 items, got {n}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(int(k), n - 1)
    queries = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if queries.ndim != 1:
        raise ValueError(f"rows must be 1-D item row numbers, got shape {queries.shape}")
    if len(queries) and (queries.min() < 0 or queries.max() >= n):
        raise ValueError(f"rows must lie in [0, {n}), got {queries.min()}..{queries.max()}")
    spaces = []
    for x in (a, b):
        vecs = np.ascontiguousarray(normalize(x))
        index = faiss.IndexFlatIP(vecs.shape[1])
        if _faiss_gpus(faiss):  # as in retrieval.search: the same exact search on the GPU
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(vecs)
        spaces.append((index, vecs))
    out = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), _BATCH):
        q = queries[start : start + _BATCH]
        both = np.concatenate([_neighbours(index, vecs, q, k) for index, vecs in spaces], 1)
        both.sort(1)  # each side's k rows are distinct: a repeat is a shared neighbour
        out[start : start + len(q)] = (both[:, 1:] == both[:, :-1]).sum(1) / k
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = _average_ranks(x[order])
    return r


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation, ties given their average rank. NaN when either side is
    constant or there are fewer than 2 values."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"x and y must be 1-D of the same length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("x and y must be finite (no NaN or inf)")
    if len(a) < 2 or (a == a[0]).all() or (b == b[0]).all():
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def _stratified_split(
    labels: np.ndarray, test_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, test rows)``: each class shuffled and ``test_share`` of it held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in (False, True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_share * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.concatenate(train), np.concatenate(test)


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iters: int = 100):
    """Weights and intercept of an L2-penalised logistic regression, full-batch L-BFGS from
    zero: deterministic, no random initialisation."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=iters, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt)
        loss = loss + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def exposure_probe_auc(
    vectors: np.ndarray,
    is_head: np.ndarray,
    seed: int = 0,
    test_share: float = 0.3,
    l2: float = 1e-3,
) -> float:
    """Held-out ROC AUC of a logistic probe predicting ``is_head`` from the unit vectors, on
    a stratified split drawn from ``seed``. NaN when a class has fewer than 2 train items
    or no test item."""
    v = np.asarray(vectors)
    y = np.asarray(is_head, dtype=bool)
    if v.ndim != 2 or y.shape != (v.shape[0],):
        raise ValueError(
            f"vectors must be [items, dim] and is_head [items], got {v.shape} and {y.shape}"
        )
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie in (0, 1), got {test_share}")
    if not np.isfinite(v).all():
        raise ValueError("vectors must be finite (no NaN or inf)")
    train, test = _stratified_split(y, test_share, seed)
    n_train_head = int(y[train].sum())
    n_test_head = int(y[test].sum())
    if min(n_train_head, len(train) - n_train_head) < 2:
        return float("nan")
    if min(n_test_head, len(test) - n_test_head) < 1:
        return float("nan")
    x = normalize(v).astype(np.float64)
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    w, b = _fit_logistic(x[train], y[train], l2)
    return auc(y[test].astype(np.float64), x[test] @ w + b)


def representation_bias(
    space: np.ndarray,
    reference: np.ndarray,
    impressions: np.ndarray,
    is_head: np.ndarray,
    usable: np.ndarray | None = None,
    k: int = 20,
    seed: int = 0,
) -> dict[str, float | int]:
    """One encoder's exposure-bias summary against the S1 ``reference``, over the
    ``usable`` rows (default all; neighbours are searched among them only).

    Keys: ``overlap_head``, ``overlap_tail`` (mean neighbour overlap), ``overlap_vs_impressions``
    (Spearman of overlap with ``log1p(impressions)``), ``exposure_probe_auc``, ``k`` (as used,
    clipped to the usable items - 1), ``n_head``, ``n_tail``."""
    a, b = _check_spaces(space, reference)
    n = a.shape[0]
    imp = np.asarray(impressions)
    head = np.asarray(is_head, dtype=bool)
    mask = np.ones(n, dtype=bool) if usable is None else np.asarray(usable, dtype=bool)
    for name, arr in (("impressions", imp), ("is_head", head), ("usable", mask)):
        if arr.shape != (n,):
            raise ValueError(f"{name} must have one value per item ({n}), got shape {arr.shape}")
    if (imp < 0).any():
        raise ValueError("impressions must be counts >= 0")
    n_head = int((head & mask).sum())
    n_tail = int((~head & mask).sum())
    if n_head == 0 or n_tail == 0:
        missing = "head" if n_head == 0 else "tail"
        raise InputError(
            f"representation bias needs usable head and tail items, found no usable {missing} "
            f"items ({n_head} head, {n_tail} tail of {n} items): check is_head and the usable "
            "mask (items with both embeddings)"
        )
    # one usable head and one usable tail item are the 2 items that neighbours need
    k = min(int(k), n_head + n_tail - 1)
    overlap = neighbour_overlap(a[mask], b[mask], k)
    head_u = head[mask]
    return {
        "overlap_head": float(overlap[head_u].mean()),
        "overlap_tail": float(overlap[~head_u].mean()),
        "overlap_vs_impressions": spearman(overlap, np.log1p(imp[mask].astype(np.float64))),
        "exposure_probe_auc": exposure_probe_auc(a[mask], head_u, seed),
        "k": k,
        "n_head": n_head,
        "n_tail": n_tail,
    }


def _percentile_ci(boots: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of bootstrap values at coverage ``level`` (NaN if none)."""
    alpha = (1.0 - level) / 2
    if not len(boots):
        return np.nan, np.nan
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _head_tail_gap(hits: np.ndarray, head: np.ndarray) -> tuple[float, float]:
    return float(hits[head].mean()), float(hits[~head].mean())


def selection_bias_gap(
    hits: np.ndarray,
    hits_ref: np.ndarray,
    target_is_head: np.ndarray,
    top_head_share: np.ndarray | None = None,
    top_head_share_ref: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int | list[float]]:
    """The selection-bias gap Δ of an encoder against the reference (S1) on the same
    retrieval queries, with a paired bootstrap CI over queries.

    Args:
        hits / hits_ref: per query, whether the target is in the top 10 (encoder / S1).
        target_is_head: per query, whether its target is a head item.
        top_head_share / top_head_share_ref: optional, per query, the share of the top 10
            that is head items; gives ``tail_top10_head_share`` (mean over tail-target
            queries) for both and their difference.
        n_boot: bootstrap resamples; each draws ``len(hits)`` queries with replacement
            (``numpy.random.default_rng(seed).integers``, one call per resample), the same
            queries for the encoder and S1. Resamples without a head or a tail query are
            left out.
        level: the CI's coverage (percentile interval).

    Returns:
        ``delta`` (gap − gap_ref), ``ci95`` ([lo, hi]), ``gap``, ``gap_ref``, ``head_hr``,
        ``tail_hr``, ``head_hr_ref``, ``tail_hr_ref``, ``n_head``, ``n_tail``, ``n_boot``,
        and with the head shares ``tail_top10_head_share(_ref)`` and
        ``tail_top10_head_share_diff``.

    Raises:
        InputError: no head-target or no tail-target query.

    Example:
        >>> r = selection_bias_gap([1, 1, 0, 0], [1, 0, 0, 0], [True, True, False, False])
        >>> r["gap"], r["gap_ref"], r["delta"]
        (1.0, 0.5, 0.5)
    """
    h = np.asarray(hits, dtype=np.float64)
    r = np.asarray(hits_ref, dtype=np.float64)
    head = np.asarray(target_is_head, dtype=bool)
    if h.ndim != 1 or h.shape != r.shape or h.shape != head.shape:
        raise ValueError(
            "hits, hits_ref and target_is_head must be 1-D, one value per retrieval query, "
            f"got shapes {h.shape}, {r.shape} and {head.shape}"
        )
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    n_head, n_tail = int(head.sum()), int((~head).sum())
    if n_head == 0 or n_tail == 0:
        missing = "head" if n_head == 0 else "tail"
        raise InputError(
            f"the selection-bias gap needs head- and tail-target retrieval queries, found no "
            f"{missing} target among {len(head)} queries"
        )
    head_hr, tail_hr = _head_tail_gap(h, head)
    head_ref, tail_ref = _head_tail_gap(r, head)
    gap, gap_ref = head_hr - tail_hr, head_ref - tail_ref
    # paired: Δ is a statistic of the per-query difference d = hit − hit_ref
    d = h - r
    dh, dt, hf = d * head, d * ~head, head.astype(np.float64)
    rng = np.random.default_rng(seed)
    n = len(d)
    boots = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        wh = w @ hf
        wt = n - wh
        boots[b] = (w @ dh) / wh - (w @ dt) / wt if wh > 0 and wt > 0 else np.nan
    boots = boots[np.isfinite(boots)]
    lo, hi = _percentile_ci(boots, level)
    out: dict[str, float | int | list[float]] = {
        "delta": gap - gap_ref,
        "ci95": [float(lo), float(hi)],
        "gap": gap,
        "gap_ref": gap_ref,
        "head_hr": head_hr,
        "tail_hr": tail_hr,
        "head_hr_ref": head_ref,
        "tail_hr_ref": tail_ref,
        "n_head": n_head,
        "n_tail": n_tail,
        "n_boot": int(len(boots)),
    }
    if top_head_share is not None and top_head_share_ref is not None:
        s = np.asarray(top_head_share, dtype=np.float64)
        s_ref = np.asarray(top_head_share_ref, dtype=np.float64)
        if s.shape != h.shape or s_ref.shape != h.shape:
            raise ValueError(
                f"top_head_share and top_head_share_ref must have one value per query "
                f"({n}), got shapes {s.shape} and {s_ref.shape}"
            )
        share, share_ref = float(s[~head].mean()), float(s_ref[~head].mean())
        out["tail_top10_head_share"] = share
        out["tail_top10_head_share_ref"] = share_ref
        out["tail_top10_head_share_diff"] = share - share_ref
    return out


class _WeightedAUC:
    """ROC AUC of fixed labels and scores under row weights (ties count 1/2), O(n) a call
    once the scores are sorted: what a bootstrap over queries recomputes many times."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(scores, kind="stable")
        _, self.group = np.unique(scores[order], return_inverse=True)
        self.order = order
        self.pos = labels[order].astype(np.float64)
        self.n_groups = int(self.group.max()) + 1 if len(order) else 0

    def __call__(self, w: np.ndarray) -> float:
        w = w[self.order]
        pw = np.bincount(self.group, weights=w * self.pos, minlength=self.n_groups)
        nw = np.bincount(self.group, weights=w * (1.0 - self.pos), minlength=self.n_groups)
        p_tot, n_tot = pw.sum(), nw.sum()
        if p_tot <= 0 or n_tot <= 0:
            return float("nan")
        below = np.cumsum(nw) - nw
        return float((pw * (below + 0.5 * nw)).sum() / (p_tot * n_tot))


def ctr_head_tail(
    labels: np.ndarray,
    probs: np.ndarray,
    item_is_head: np.ndarray,
    query: np.ndarray,
    probs_ref: np.ndarray | None = None,
    n_boot: int = 500,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int | list[float]]:
    """A CTR model's random-exposure AUC and calibration on head and on tail items.

    Args:
        labels / probs: per impression of the random-exposure log, click and predicted
            P(click) (at the top slot, as ``visctr.ctr.predict_ctr`` scores).
        item_is_head: per impression, whether the shown item is a head item.
        query: per impression, its query (any integer id): the bootstrap's unit.
        probs_ref: another model's predictions for the same impressions; gives
            ``gap_delta`` = (head − tail AUC) − the reference's, with a paired bootstrap
            CI (the same resampled queries for both).
        n_boot: bootstrap resamples over queries (``default_rng(seed)``).

    Returns:
        ``auc_head``, ``auc_tail``, ``gap`` (head − tail AUC), ``calibration_head`` /
        ``calibration_tail`` (mean predicted over observed CTR: the predictions are for the
        top slot and the log shows items at every slot, so both exceed 1 by the same
        position factor; their ratio ``calibration_tail_over_head`` is what compares),
        ``n_head``/``n_tail`` impressions and ``clicks_head``/``clicks_tail``; with
        ``probs_ref`` also ``gap_ref``, ``gap_delta`` and ``ci95``.

    Example:
        >>> r = ctr_head_tail([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6], [True, True, False, False],
        ...                   [0, 0, 1, 1], n_boot=10)
        >>> r["auc_head"], r["auc_tail"], r["gap"]
        (1.0, 0.0, 1.0)
    """
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    head = np.asarray(item_is_head, dtype=bool)
    q = np.asarray(query)
    if not (y.ndim == 1 and y.shape == p.shape == head.shape == q.shape):
        raise ValueError(
            "labels, probs, item_is_head and query must be 1-D, one value per impression, got "
            f"shapes {y.shape}, {p.shape}, {head.shape} and {q.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    out: dict[str, float | int | list[float]] = {}
    for part, m in (("head", head), ("tail", ~head)):
        if not m.any():
            raise InputError(f"the CTR head/tail table needs {part} items among the impressions")
        out[f"auc_{part}"] = auc(y[m], p[m])
        observed = y[m].mean()
        out[f"calibration_{part}"] = float(p[m].mean() / observed) if observed > 0 else np.nan
        out[f"n_{part}"] = int(m.sum())
        out[f"clicks_{part}"] = int(y[m].sum())
    out["gap"] = out["auc_head"] - out["auc_tail"]
    out["calibration_tail_over_head"] = out["calibration_tail"] / out["calibration_head"]
    if probs_ref is None:
        return out
    r = np.asarray(probs_ref, dtype=np.float64)
    if r.shape != p.shape:
        raise ValueError(f"probs_ref must have one value per impression ({len(p)}), got {r.shape}")
    out["gap_ref"] = auc(y[head], r[head]) - auc(y[~head], r[~head])
    out["gap_delta"] = out["gap"] - out["gap_ref"]
    _, qrow = np.unique(q, return_inverse=True)
    n_q = int(qrow.max()) + 1
    aucs = [_WeightedAUC(y[m], s[m]) for s in (p, r) for m in (head, ~head)]
    qrows = [qrow[m] for _ in (p, r) for m in (head, ~head)]
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, n_q, size=n_q), minlength=n_q).astype(np.float64)
        a_h, a_t, r_h, r_t = (f(counts[rows]) for f, rows in zip(aucs, qrows, strict=True))
        boots[b] = (a_h - a_t) - (r_h - r_t)
    boots = boots[np.isfinite(boots)]
    lo, hi = _percentile_ci(boots, level)
    out["ci95"] = [float(lo), float(hi)]
    out["n_boot"] = int(len(boots))
    return out
