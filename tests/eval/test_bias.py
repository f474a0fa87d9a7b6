"""Representational exposure bias: neighbour overlap against a brute-force kNN, Spearman
against hand-computed and pairwise-rank references, the head/tail probe on planted and
absent signals, and the summary on a space whose tail is scrambled."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.errors import InputError
from visctr.eval.bias import (
    exposure_probe_auc,
    neighbour_overlap,
    representation_bias,
    spearman,
)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_neighbours(x: np.ndarray, k: int) -> list[set[int]]:
    s = _unit(x) @ _unit(x).T
    np.fill_diagonal(s, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in s]


def brute_overlap(space: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    a, b = brute_neighbours(space, k), brute_neighbours(reference, k)
    return np.array([len(p & q) / k for p, q in zip(a, b, strict=True)])


def rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


@pytest.mark.parametrize("k", [1, 5, 12])
@pytest.mark.parametrize("seed", [0, 1])
def test_neighbour_overlap_matches_brute_force(k, seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(80, 6)).astype(np.float32)
    # a perturbed copy (partial agreement) in a different width
    space = np.concatenate([ref, np.zeros((80, 2), np.float32)], 1)
    space += rng.normal(scale=0.6, size=space.shape).astype(np.float32)
    got = neighbour_overlap(space, ref, k)
    want = brute_overlap(space, ref, k)
    np.testing.assert_allclose(got, want)
    assert 0.0 < got.mean() < 1.0  # neither trivially equal nor disjoint


def test_identical_and_rotated_spaces_agree_fully():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)).astype(np.float32)
    assert (neighbour_overlap(ref, ref, 10) == 1.0).all()
    rotated = (ref.astype(np.float64) @ rotation(16, rng)).astype(np.float32)
    assert (neighbour_overlap(3.0 * rotated, ref, 10) == 1.0).all()  # scale is irrelevant too


def test_independent_space_overlaps_by_chance():
    rng = np.random.default_rng(0)
    n, k = 500, 10
    a = rng.normal(size=(n, 32)).astype(np.float32)
    b = rng.normal(size=(n, 32)).astype(np.float32)
    assert abs(neighbour_overlap(a, b, k).mean() - k / (n - 1)) < 0.01


def test_rows_subset_and_k_clipping():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(60, 5)).astype(np.float32)
    space = ref + rng.normal(scale=0.8, size=ref.shape).astype(np.float32)
    full = neighbour_overlap(space, ref, 7)
    rows = np.array([17, 0, 59, 17])
    np.testing.assert_array_equal(neighbour_overlap(space, ref, 7, rows=rows), full[rows])
    assert neighbour_overlap(space, ref, 7, rows=np.array([], dtype=np.int64)).shape == (0,)
    # k beyond n - 1 means every other item: both spaces agree trivially
    assert (neighbour_overlap(space[:10], ref[:10], 100) == 1.0).all()


def test_duplicate_rows_keep_k_distinct_neighbours():
    # all rows equal: self may fall outside the k + 1 hits; the overlap is still a share
    dup = np.ones((30, 4), np.float32)
    got = neighbour_overlap(dup, dup, 5)
    assert got.shape == (30,)
    assert ((got >= 0.0) & (got <= 1.0)).all()


def test_neighbour_overlap_rejects_bad_shapes():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="differ in items"):
        neighbour_overlap(x, np.zeros((6, 3), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        neighbour_overlap(x, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        neighbour_overlap(x[:1], x[:1])
    with pytest.raises(ValueError, match="rows must lie"):
        neighbour_overlap(x + 1, x + 1, 2, rows=np.array([5]))


def test_spearman_hand_computed():
    # x ranks 1, 2.5, 2.5, 4 and y ranks 1, 3, 2, 4: centred dot 4.5, norms² 4.5 and 5
    assert math.isclose(spearman([1, 2, 2, 3], [1, 3, 2, 4]), math.sqrt(0.9), rel_tol=1e-12)
    assert math.isclose(spearman([1, 2, 3], [10, 20, 400]), 1.0)
    assert math.isclose(spearman([1, 2, 3], [3, 2, 1]), -1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(spearman([1], [2]))


def brute_spearman(x, y) -> float:
    def ranks(v):
        return [1 + sum(w < a for w in v) + 0.5 * (sum(w == a for w in v) - 1) for a in v]

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.floats(-3, 3, allow_nan=False)), min_size=3, max_size=30
    )
)
@settings(max_examples=100, deadline=None)
def test_spearman_matches_pairwise_ranks(pairs):
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    got = spearman(x, y)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert math.isnan(got)
    else:
        assert math.isclose(got, brute_spearman(x, y), rel_tol=1e-9, abs_tol=1e-12)


def _probe_data(signal: float, n: int = 2000, d: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    head = rng.random(n) < 0.25
    v = rng.normal(size=(n, d))
    v[:, 0] += signal * head
    return v.astype(np.float32), head


def test_probe_reads_planted_headness():
    v, head = _probe_data(signal=3.0)
    assert exposure_probe_auc(v, head, seed=0) > 0.95


def test_probe_is_chance_without_signal():
    v, head = _probe_data(signal=0.0)
    assert 0.4 < exposure_probe_auc(v, head, seed=0) < 0.6
    # nearly as many dims as train items: in-sample the probe overfits, held out it cannot
    v, head = _probe_data(signal=0.0, n=600, d=300)
    assert 0.3 < exposure_probe_auc(v, head, seed=0) < 0.7


def test_probe_is_deterministic_and_nan_when_a_class_is_too_small():
    v, head = _probe_data(signal=1.0, n=600)
    assert exposure_probe_auc(v, head, seed=4) == exposure_probe_auc(v, head, seed=4)
    two_heads = np.zeros(600, dtype=bool)
    two_heads[[7, 8]] = True  # one held out, one left to train on: too few to fit
    assert math.isnan(exposure_probe_auc(v, two_heads))
    assert math.isnan(exposure_probe_auc(v, np.ones(600, dtype=bool)))


def _biased_world(n: int = 600, d: int = 16, seed: int = 0):
    """A reference, a space that keeps the head's geometry (rotated) but scrambles the
    tail's (random rows), and impressions that are high for the head."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, d)).astype(np.float32)
    head = rng.random(n) < 0.3
    space = ref.astype(np.float64) @ rotation(d, rng)
    space[~head] = rng.normal(size=(int((~head).sum()), d))
    impressions = np.where(head, rng.integers(100, 1000, n), rng.integers(0, 10, n))
    return space.astype(np.float32), ref, impressions, head


def test_representation_bias_sees_a_scrambled_tail():
    space, ref, impressions, head = _biased_world()
    out = representation_bias(space, ref, impressions, head, k=10)
    assert out["overlap_tail"] < out["overlap_head"]
    assert out["overlap_vs_impressions"] > 0
    assert (out["k"], out["n_head"], out["n_tail"]) == (10, int(head.sum()), int((~head).sum()))
    for key in ("overlap_head", "overlap_tail", "overlap_vs_impressions", "exposure_probe_auc"):
        assert type(out[key]) is float
    # the unbiased reference against itself: no head/tail gap
    same = representation_bias(ref, ref, impressions, head, k=10)
    assert same["overlap_head"] == same["overlap_tail"] == 1.0


def test_representation_bias_searches_usable_rows_only():
    space, ref, impressions, head = _biased_world(n=300)
    usable = np.random.default_rng(1).random(300) < 0.7
    got = representation_bias(space, ref, impressions, head, usable, k=8, seed=2)
    want = representation_bias(
        space[usable], ref[usable], impressions[usable], head[usable], k=8, seed=2
    )
    assert got == want


def test_representation_bias_needs_head_and_tail():
    space, ref, impressions, head = _biased_world(n=100)
    with pytest.raises(InputError, match="no usable head"):
        representation_bias(space, ref, impressions, np.zeros(100, dtype=bool))
    with pytest.raises(InputError, match="no usable tail"):
        representation_bias(space, ref, impressions, head, usable=head)
