"""S3's loss functions (triplet, CORAL, MMD, the relational anchor) against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.losses.coral import coral
from visctr.losses.mmd import mmd
from visctr.losses.relational import relational
from visctr.losses.triplet import triplet_loss


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(2, 5), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_triplet_loss_matches_brute_force(n, d, margin, seed):
    g = torch.Generator().manual_seed(seed)
    a, p, q = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    got = triplet_loss(a, p, q, margin).item()

    def cos(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    ref = np.mean([max(0.0, cos(a[i], q[i]) - cos(a[i], p[i]) + margin) for i in range(n)])
    assert got == pytest.approx(ref, abs=1e-9)
    # unit=True (rows already normalised, as DebiasNet outputs are): same loss
    unit = [x / x.norm(dim=1, keepdim=True) for x in (a, p, q)]
    assert triplet_loss(*unit, margin, unit=True).item() == pytest.approx(ref, abs=1e-9)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_coral_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    h, t = torch.randn(7, 4, generator=g), torch.randn(5, 4, generator=g)
    want = 0.0
    for j, k in itertools.product(range(4), range(4)):
        ch = sum(h[r, j] * h[r, k] for r in range(7)) / 7
        ct = sum(t[r, j] * t[r, k] for r in range(5)) / 5
        want += float(ch - ct) ** 2
    assert float(coral(h, t)) == pytest.approx(want / 16, rel=1e-5)
    assert float(coral(h, h)) == pytest.approx(0.0, abs=1e-7)


def test_mmd_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    h, t = torch.randn(6, 3, generator=g), torch.randn(4, 3, generator=g) + 1.0
    sig = (0.5, 1.0, 2.0)

    def k(x, y):
        d2 = float(((x - y) ** 2).sum())
        return sum(math.exp(-d2 / (2 * s * s)) for s in sig)

    def mean_k(a, b):
        return sum(k(x, y) for x in a for y in b) / (len(a) * len(b))

    want = mean_k(h, h) + mean_k(t, t) - 2 * mean_k(h, t)
    assert float(mmd(h, t, sig)) == pytest.approx(want, rel=1e-5)
    assert want > 0.05  # the shifted batch is measurably apart
    assert float(mmd(h, h, sig)) == pytest.approx(0.0, abs=1e-6)


def test_relational_anchor_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    d, s = torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g)
    du, su = _unit(d), _unit(s)
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    want = sum(float(du[i] @ du[j] - su[i] @ su[j]) ** 2 for i, j in pairs) / len(pairs)
    assert float(relational(d, s)) == pytest.approx(want, rel=1e-5)
    assert float(relational(d, d * 3)) == pytest.approx(0.0, abs=1e-6)  # the same geometry
