"""BYOL loss: the online prediction of one view regresses the target projection of the
other, symmetrised.

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, eq. 2 and the sum below it:
``L = (2 - 2·cos(p1, sg(z2))) + (2 - 2·cos(p2, sg(z1)))``, each term averaged over the
batch. ``p`` are online predictor outputs, ``z`` target projector outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visctr.precision import fp32


@fp32
def byol_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """Symmetric BYOL loss in [0, 8]; 0 means each prediction matches the other target.

    No gradient flows into ``z1, z2`` (the target network is updated by EMA, not SGD).
    """
    if not p1.shape == p2.shape == z1.shape == z2.shape or p1.ndim != 2:
        raise ValueError(
            f"p1, p2, z1, z2 must all be [B, D], got {tuple(p1.shape)}, {tuple(p2.shape)}, "
            f"{tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    d12 = 2 - 2 * F.cosine_similarity(p1, z2.detach(), dim=1).mean()
    d21 = 2 - 2 * F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    return d12 + d21
