"""CORAL: ESAM's attribute-correlation alignment (SIGIR 2020), S3's head/tail alignment.

Between a batch of head items' vectors ``h`` and tail items' ``t``:
``(1/L²)·Σ_jk (C_h − C_t)²_jk`` with ``C = XᵀX / n`` the (uncentred) feature Gram of a
batch of ``n`` rows and ``L`` features. On unit vectors it is small (ESAM's code weights
it ×100). Callers detach the head side when the tail alone should move (CD²AN's
stop-gradient from the exposed side).
"""

from __future__ import annotations

import torch

__all__ = ["coral"]


def rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` if it is a non-empty ``[n, L]`` batch; a ``ValueError`` naming it otherwise."""
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty [n, L] batch, got shape {tuple(x.shape)}")
    return x


def coral(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(1/L²)·Σ_jk (hᵀh/n_h − tᵀt/n_t)²_jk``: the feature Grams of two batches apart."""
    h, t = rows(h, "h"), rows(t, "t")
    if h.shape[1] != t.shape[1]:
        raise ValueError(f"h and t differ in width: {h.shape[1]} vs {t.shape[1]}")
    diff = h.t() @ h / h.shape[0] - t.t() @ t / t.shape[0]
    return diff.square().sum() / h.shape[1] ** 2
