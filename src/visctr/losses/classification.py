"""Category cross-entropy for the ResNet-C baseline (an encoder trained on category labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visctr.precision import fp32


@fp32
def category_cross_entropy(
    logits: torch.Tensor, categories: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of ``logits [B, K]`` against integer ``categories [B]``."""
    if logits.ndim != 2 or categories.ndim != 1 or len(logits) != len(categories):
        raise ValueError(
            f"expected logits [B, K] and categories [B], got "
            f"{tuple(logits.shape)} and {tuple(categories.shape)}"
        )
    return F.cross_entropy(logits, categories.long(), label_smoothing=label_smoothing)
