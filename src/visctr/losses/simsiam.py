"""SimSiam loss: symmetric negative cosine similarity with stop-gradient on the target.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021:
``L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2`` with ``D(p, z) = -cos(p, z)`` averaged over
the batch. ``p`` are predictor outputs, ``z`` projector outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visctr.precision import fp32


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean of ``-cos(p_i, z_i)`` with no gradient flowing into ``z``."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@fp32
def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """Symmetric SimSiam loss in [-1, 1]; -1 means perfectly aligned views."""
    return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))
