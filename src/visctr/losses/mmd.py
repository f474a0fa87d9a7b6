"""MMD: the biased estimate of the squared maximum mean discrepancy with a sum of Gaussian
kernels (CD²AN, SIGIR 2022, aligns head and tail items with it; S3's ``align: mmd``).

Callers detach the head side when the tail alone should move (CD²AN's stop-gradient from
the exposed side).
"""

from __future__ import annotations

import torch

from visctr.losses.coral import rows

__all__ = ["MMD_BANDWIDTHS", "mmd"]

MMD_BANDWIDTHS = (0.5, 1.0, 2.0)  # Gaussian kernel widths σ; unit vectors are ≤ 2 apart


def _kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    d2 = (x.square().sum(1, keepdim=True) + y.square().sum(1) - 2 * x @ y.t()).clamp_min(0)
    return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)


def mmd(
    h: torch.Tensor, t: torch.Tensor, bandwidths: tuple[float, ...] = MMD_BANDWIDTHS
) -> torch.Tensor:
    """Biased squared MMD, ``E k(h, h') + E k(t, t') − 2 E k(h, t)``, ``k`` a sum of
    Gaussian kernels ``exp(−‖x − y‖² / 2σ²)`` over ``bandwidths``."""
    h, t = rows(h, "h"), rows(t, "t")
    if h.shape[1] != t.shape[1]:
        raise ValueError(f"h and t differ in width: {h.shape[1]} vs {t.shape[1]}")
    return (
        _kernel(h, h, bandwidths).mean()
        + _kernel(t, t, bandwidths).mean()
        - 2 * _kernel(h, t, bandwidths).mean()
    )
