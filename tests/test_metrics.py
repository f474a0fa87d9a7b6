"""CTR metrics against brute-force references (pairwise Mann-Whitney, direct sums)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.metrics import auc, ctr_metrics, gauc, group_aucs, logloss


def brute_auc(labels, scores) -> float:
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    if not pos or not neg:
        return float("nan")
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def brute_gauc(labels, scores, groups) -> float:
    num = den = 0.0
    for g in sorted(set(groups)):
        idx = [i for i, h in enumerate(groups) if h == g]
        a = brute_auc([labels[i] for i in idx], [scores[i] for i in idx])
        if not math.isnan(a):
            num += a * len(idx)
            den += len(idx)
    return num / den if den else float("nan")


def brute_logloss(labels, probs, eps=1e-7) -> float:
    total = 0.0
    for y, p in zip(labels, probs, strict=True):
        p = min(max(p, eps), 1 - eps)
        total += -(math.log(p) if y == 1 else math.log(1 - p))
    return total / len(labels)


# few distinct score values so that ties are common
rows = st.lists(
    st.tuples(
        st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.9, 1.0]), st.integers(0, 4)
    ),
    min_size=0,
    max_size=40,
)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(rows)
def test_auc_matches_pairwise_definition(data):
    labels = [r[0] for r in data]
    scores = [r[1] for r in data]
    assert same(auc(np.array(labels), np.array(scores)), brute_auc(labels, scores))


@settings(max_examples=200, deadline=None)
@given(rows)
def test_gauc_matches_per_group_reference(data):
    labels = [r[0] for r in data]
    scores = [r[1] for r in data]
    groups = [r[2] for r in data]
    got = gauc(np.array(labels), np.array(scores), np.array(groups))
    assert same(got, brute_gauc(labels, scores, groups))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 1.0)), min_size=1, max_size=30))
def test_logloss_matches_reference(data):
    labels = [r[0] for r in data]
    probs = [r[1] for r in data]
    assert math.isclose(
        logloss(np.array(labels), np.array(probs)), brute_logloss(labels, probs), rel_tol=1e-9
    )


def test_auc_known_values():
    assert auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert auc(np.array([0, 1]), np.array([0.9, 0.1])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_undefined_cases_are_nan():
    assert math.isnan(auc(np.array([1, 1]), np.array([0.2, 0.3])))
    assert math.isnan(auc(np.array([]), np.array([])))
    assert math.isnan(logloss(np.array([]), np.array([])))
    assert math.isnan(gauc(np.array([1, 0]), np.array([0.2, 0.3]), np.array([0, 1])))


def test_logloss_is_clipped():
    assert math.isfinite(logloss(np.array([1, 0]), np.array([0.0, 1.0])))


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError):
        auc(np.array([0, 1]), np.array([0.1]))


def test_group_aucs_reports_groups_and_counts():
    g, per, n = group_aucs(
        np.array([1, 0, 1, 1]), np.array([0.9, 0.1, 0.3, 0.2]), np.array([7, 7, 3, 3])
    )
    assert g.tolist() == [3, 7] and n.tolist() == [2, 2]
    assert math.isnan(per[0]) and per[1] == 1.0


def test_ctr_metrics_keys_and_tail_subset():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    q = rng.integers(0, 20, 200)
    tail = rng.random(200) < 0.5
    m = ctr_metrics(y, p, q, tail)
    assert set(m) == {"auc", "logloss", "gauc", "auc_tail"}
    assert same(m["auc_tail"], brute_auc(y[tail].tolist(), p[tail].tolist()))
