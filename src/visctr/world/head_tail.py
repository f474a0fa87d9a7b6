"""The head/tail split of the catalog, one definition for the simulator and for S3."""

from __future__ import annotations

import numpy as np

__all__ = ["head_mask"]


def head_mask(counts: np.ndarray, head_share: float) -> np.ndarray:
    """Boolean mask of head items: the top ``round(head_share · n)`` items by ``counts``
    (impressions), ties broken by row, and only items with ``counts > 0``: a never-shown
    item is tail.

    The simulator writes it as ``items.is_head`` (training-split counts); S3 mines its
    anchors with it (counts of the fit part of the training logs).
    """
    counts = np.asarray(counts)
    n = counts.size
    order = np.argsort(-counts, kind="stable")
    n_head = int(round(head_share * n))
    head = np.zeros(n, dtype=bool)
    head[order[:n_head]] = True
    return head & (counts > 0)
