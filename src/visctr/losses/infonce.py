"""InfoNCE / NT-Xent (SimCLR): each view's positive is the other view of the same image,
its negatives every other view in the (optionally global, across DDP ranks) batch.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020, eq. 1, averaged over all 2B anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visctr.losses.distributed import gather_with_grad, is_distributed, rank
from visctr.precision import fp32


@fp32
def info_nce_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2, gather: bool = False
) -> torch.Tensor:
    """NT-Xent over two views ``z1, z2 [B, D]`` (normalised here); mean over 2B anchors.

    With ``gather=True`` under torch.distributed, negatives come from all ranks (every rank
    must pass the same B); anchors stay local, so the loss is the local share of the global one.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be [B, D], got {tuple(z1.shape)}, {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = z1.shape[0]
    z1 = F.normalize(z1, dim=1)
    z2 = F.normalize(z2, dim=1)
    if gather and is_distributed():
        c1, c2, offset = gather_with_grad(z1), gather_with_grad(z2), rank() * b
    else:
        c1, c2, offset = z1, z2, 0
    n = c1.shape[0]  # global batch size
    anchors = torch.cat([z1, z2])  # [2B, D]
    cands = torch.cat([c1, c2])  # [2N, D]
    logits = anchors @ cands.T / temperature
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)
