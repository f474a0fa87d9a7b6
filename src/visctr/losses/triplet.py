"""Triplet margin loss on cosine similarity (S3's triplet term).

``max(0, cos(a, n) − cos(a, p) + margin)`` per triplet: the anchor must be closer, by the
margin, to its positive than to its negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["triplet_hinge", "triplet_loss"]


def triplet_hinge(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    unit: bool = False,
) -> torch.Tensor:
    """``max(0, cos(a, n) − cos(a, p) + margin)`` per row ``[n]``.

    ``unit``: the rows are already L2-normalised (DebiasNet outputs), so the cosines are
    plain dot products and the three normalisations (and their backward) are skipped."""
    if not unit:
        anchor, positive, negative = (F.normalize(x, dim=-1) for x in (anchor, positive, negative))
    return F.relu(((negative - positive) * anchor).sum(-1) + margin)


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float,
    unit: bool = False,
) -> torch.Tensor:
    """Mean of :func:`triplet_hinge` over rows."""
    return triplet_hinge(anchor, positive, negative, margin, unit).mean()
