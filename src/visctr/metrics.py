"""CTR metrics as pure numpy functions: AUC, logloss, gAUC and the pipeline's bundle.

Definitions (part of the product, see DESIGN.md §4):

- ``auc``: the Mann-Whitney probability that a random positive scores above a random
  negative, ties counting one half. Computed from average ranks, O(n log n).
- ``logloss``: mean binary cross-entropy with probabilities clipped to ``[eps, 1-eps]``.
- ``gauc``: per-group (per-query) AUC averaged with weights = the group's impression
  count; groups whose labels are all one class are skipped (their AUC is undefined).

Undefined cases return ``NaN`` rather than raising: ``auc`` of a single-class label set,
``gauc`` when no group has both classes, ``logloss``/``auc`` of an empty input. Callers
that aggregate over seeds should use ``np.nanmean`` and report the count.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "ctr_metrics", "gauc", "logloss"]


def _as_1d(x: np.ndarray, name: str, dtype: type) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _check_labels(labels: np.ndarray) -> np.ndarray:
    y = _as_1d(labels, "labels", np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0/1")
    return y.astype(bool)


def _average_ranks(sorted_scores: np.ndarray) -> np.ndarray:
    """1-based ranks of an already sorted array, ties getting their average rank."""
    n = sorted_scores.shape[0]
    if n == 0:
        return np.zeros(0)
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
    return np.repeat(run_rank, ends - starts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties = 1/2). NaN when only one class is present."""
    y = _check_labels(labels)
    s = _as_1d(scores, "scores", np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranks = _average_ranks(s[order])
    rank_sum = ranks[y[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1-eps]``. NaN if empty."""
    y = _check_labels(labels)
    p = _as_1d(probs, "probs", np.float64)
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.shape[0] == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def group_aucs(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC: ``(group ids, auc per group (NaN if one class), impressions per group)``."""
    y = _check_labels(labels)
    s = _as_1d(scores, "scores", np.float64)
    g = np.asarray(groups)
    if g.ndim != 1 or not (y.shape == s.shape == g.shape):
        raise ValueError("labels, scores and groups must be 1-D of the same length")
    if y.shape[0] == 0:
        return g[:0], np.zeros(0), np.zeros(0, dtype=np.int64)
    order = np.lexsort((s, g))  # by group, then score
    gs, ss, ys = g[order], s[order], y[order]
    n = gs.shape[0]
    group_start = np.empty(n, dtype=bool)
    group_start[0] = True
    np.not_equal(gs[1:], gs[:-1], out=group_start[1:])
    # ties: runs of equal (group, score)
    run_start = group_start.copy()
    run_start[1:] |= ss[1:] != ss[:-1]
    starts = np.flatnonzero(run_start)
    ends = np.append(starts[1:], n)
    gid = np.cumsum(group_start) - 1  # group index per sorted row
    g_first = np.flatnonzero(group_start)
    # rank within group: global position minus the group's first position
    run_rank = (starts + 1 + ends) / 2.0 - g_first[gid[starts]]
    ranks = np.repeat(run_rank, ends - starts)
    n_groups = g_first.shape[0]
    n_pos = np.bincount(gid, weights=ys, minlength=n_groups)
    n_all = np.bincount(gid, minlength=n_groups)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(gid, weights=np.where(ys, ranks, 0.0), minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    per[(n_pos == 0) | (n_neg == 0)] = np.nan
    return gs[g_first], per, n_all


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC over groups with both classes; else NaN."""
    _, per, n = group_aucs(labels, scores, groups)
    ok = np.isfinite(per)
    if not ok.any():
        return float("nan")
    return float(np.average(per[ok], weights=n[ok]))


def ctr_metrics(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, is_tail: np.ndarray
) -> dict[str, float]:
    """``auc, logloss, gauc`` over all rows and ``auc_tail`` over rows where ``is_tail``."""
    tail = np.asarray(is_tail, dtype=bool)
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    return {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "gauc": gauc(labels, probs, groups),
        "auc_tail": auc(labels[tail], probs[tail]),
    }
