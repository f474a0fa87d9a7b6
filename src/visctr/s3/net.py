"""S3's network: the DebiasNet, the gate and the two as one head.

- ``DebiasNet`` maps any visual embedding (query or item) to a debiased one: a small
  residual MLP, ``d = normalize(v + MLP(v))``, its last layer zero-initialised so it
  starts as the identity.
- ``Gate`` fuses the original and the debiased vector: ``g·v + (1−g)·d`` with
  ``g = sigmoid(Linear([v, d]))`` one gate per dimension.
- ``DebiasHead``: both, the unit exported as ``debias.pt`` (:mod:`visctr.s3.artifact`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DebiasNet(nn.Module):
    """Residual MLP on a visual vector, output L2-normalised."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v + self.fc2(F.relu(self.fc1(v))), dim=-1)


class Gate(nn.Module):
    """Vector gate ``g·v + (1−g)·d``, ``g = sigmoid(W[v, d] + b)``.

    ``W[v, d]`` is computed as ``W_v v + W_d d`` over the two column blocks of ``W`` (one
    ``Linear``, same weights): no concatenated copy, and backward computes an input
    gradient only for ``d`` when ``v`` (a frozen visual vector) needs none.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(2 * dim, dim)

    def forward(
        self, v: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        dim = v.shape[-1]
        w = self.proj.weight
        z = torch.addmm(F.linear(d, w[:, dim:], self.proj.bias), v, w[:, :dim].t())
        if bias is not None:  # the exposure-aware gate's per-row term
            z = z + bias
        g = torch.sigmoid(z)
        return d + g * (v - d)  # = g·v + (1−g)·d


class DebiasHead(nn.Module):
    """DebiasNet + Gate as one unit: ``head(v)`` is the vector the CTR model uses.

    ``detach_debiased`` (a diagnostic, off): the gate sees ``d`` without its gradient, so
    the click loss no longer trains the DebiasNet (only the triplet term does).

    ``n_buckets > 0`` (``debias.gate_exposure``): the gate also sees the row's popularity
    bucket of training impressions (``ctr.pop_buckets`` of them, ``visctr.ctr.stats``),
    as a learned per-dimension term ``E[bucket]`` added to its logits, zero-initialised so
    it starts as the plain gate; the last row, ``n_buckets``, is a query image's (queries
    have no impressions of their own). It can then lean on ``d`` where the logs are thin.
    ``head(v, buckets)`` needs the buckets of the rows.
    """

    detach_debiased = False

    def __init__(self, dim: int, hidden: int = 128, n_buckets: int = 0):
        super().__init__()
        self.net = DebiasNet(dim, hidden)
        self.gate = Gate(dim)
        self.n_buckets = n_buckets
        self.exposure = nn.Embedding(n_buckets + 1, dim) if n_buckets else None
        if self.exposure is not None:
            nn.init.zeros_(self.exposure.weight)

    @property
    def query_bucket(self) -> int:
        """The exposure row of a query image (the last)."""
        return self.n_buckets

    def fuse(
        self, v: torch.Tensor, d: torch.Tensor, buckets: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """The gated fusion of ``v`` and its debiased ``d = net(v)``; ``buckets``: the rows'
        exposure buckets (required with the exposure-aware gate, ignored without)."""
        bias = None
        if self.exposure is not None:
            if buckets is None:
                raise ValueError("the exposure-aware gate needs each row's exposure bucket")
            # an int: one bucket for every row (a query batch), broadcast over the rows
            w = self.exposure.weight
            bias = w[buckets] if isinstance(buckets, int) else self.exposure(buckets)
        return self.gate(v, d.detach() if self.detach_debiased else d, bias)

    def forward(self, v: torch.Tensor, buckets: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.fuse(v, self.net(v), buckets)
