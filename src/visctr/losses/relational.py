"""The S1 relational anchor of S3: the mean over pairs ``i < j`` of
``(cos(d_i, d_j) − cos(s_i, s_j))²``. It keeps the pairwise geometry of the unbiased
reference ``s``, so that head/tail alignment cannot collapse the debiased space ``d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visctr.losses.coral import rows

__all__ = ["relational"]


def relational(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Mean over pairs ``i < j`` of ``(cos(d_i, d_j) − cos(s_i, s_j))²``; ``d`` and ``s``
    hold the same rows in two spaces (their widths may differ)."""
    d, s = rows(d, "d"), rows(s, "s")
    n = d.shape[0]
    if s.shape[0] != n or n < 2:
        raise ValueError(f"d and s need the same n >= 2 rows, got {n} and {s.shape[0]}")
    d, s = F.normalize(d, dim=-1), F.normalize(s, dim=-1)
    diff = (d @ d.t() - s @ s.t()).square()
    # the diagonal is (1 − 1)² = 0 for unit rows, and the matrix symmetric: sum / pairs / 2
    return diff.triu(1).sum() / (n * (n - 1) / 2)
