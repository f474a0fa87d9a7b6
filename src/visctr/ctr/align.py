"""Distribution-alignment terms of S3 on debiased vectors (torch, differentiable).

- :func:`coral`: ESAM's attribute-correlation alignment (SIGIR 2020) between a batch of
  head items' vectors ``h`` and tail items' ``t``: ``(1/L²)·Σ_jk (C_h − C_t)²_jk`` with
  ``C = XᵀX / n`` the (uncentred) feature Gram of a batch of ``n`` rows and ``L`` features.
  On unit vectors it is small (ESAM's code weights it ×100).
- :func:`mmd`: the biased estimate of the squared maximum mean discrepancy with a sum of
  Gaussian kernels (CD²AN, SIGIR 2022, aligns head and tail with it).
- :func:`relational`: the S1 relational anchor, the mean over pairs ``i < j`` of
  ``(cos(d_i, d_j) − cos(s_i, s_j))²``: it keeps the pairwise geometry of the unbiased
  reference, so that alignment cannot collapse the space.

The callers detach the head side when the tail alone should move (CD²AN's stop-gradient
from the exposed side).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MMD_BANDWIDTHS = (0.5, 1.0, 2.0)  # Gaussian kernel widths σ; unit vectors are ≤ 2 apart


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty [n, L] batch, got shape {tuple(x.shape)}")
    return x


def coral(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(1/L²)·Σ_jk (hᵀh/n_h − tᵀt/n_t)²_jk``: the feature Grams of two batches apart."""
    h, t = _rows(h, "h"), _rows(t, "t")
    if h.shape[1] != t.shape[1]:
        raise ValueError(f"h and t differ in width: {h.shape[1]} vs {t.shape[1]}")
    diff = h.t() @ h / h.shape[0] - t.t() @ t / t.shape[0]
    return diff.square().sum() / h.shape[1] ** 2


def _kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...]) -> torch.Tensor:
    d2 = (x.square().sum(1, keepdim=True) + y.square().sum(1) - 2 * x @ y.t()).clamp_min(0)
    return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)


def mmd(
    h: torch.Tensor, t: torch.Tensor, bandwidths: tuple[float, ...] = MMD_BANDWIDTHS
) -> torch.Tensor:
    """Biased squared MMD, ``E k(h, h') + E k(t, t') − 2 E k(h, t)``, ``k`` a sum of
    Gaussian kernels ``exp(−‖x − y‖² / 2σ²)`` over ``bandwidths``."""
    h, t = _rows(h, "h"), _rows(t, "t")
    if h.shape[1] != t.shape[1]:
        raise ValueError(f"h and t differ in width: {h.shape[1]} vs {t.shape[1]}")
    return (
        _kernel(h, h, bandwidths).mean()
        + _kernel(t, t, bandwidths).mean()
        - 2 * _kernel(h, t, bandwidths).mean()
    )


def relational(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Mean over pairs ``i < j`` of ``(cos(d_i, d_j) − cos(s_i, s_j))²``; ``d`` and ``s``
    hold the same rows in two spaces (their widths may differ)."""
    d, s = _rows(d, "d"), _rows(s, "s")
    n = d.shape[0]
    if s.shape[0] != n or n < 2:
        raise ValueError(f"d and s need the same n >= 2 rows, got {n} and {s.shape[0]}")
    d, s = F.normalize(d, dim=-1), F.normalize(s, dim=-1)
    diff = (d @ d.t() - s @ s.t()).square()
    # the diagonal is (1 − 1)² = 0 for unit rows, and the matrix symmetric: sum / pairs / 2
    return diff.triu(1).sum() / (n * (n - 1) / 2)


__all__ = ["MMD_BANDWIDTHS", "coral", "mmd", "relational"]
