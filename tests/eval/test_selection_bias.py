"""The selection-bias gap Δ: exact on hand-made hits, the paired bootstrap against a
loop over the same resampled queries, the head share of tail queries' top 10."""

from __future__ import annotations

import numpy as np
import pytest

from visctr.errors import InputError
from visctr.eval.bias import selection_bias_gap


def brute_gap(hits, ref, head, queries) -> float:
    """(head HR − tail HR) − (S1's), over a list of query indices, with plain loops."""
    sums = {(w, side): 0.0 for w in "er" for side in (True, False)}
    counts = {True: 0, False: 0}
    for q in queries:
        side = bool(head[q])
        counts[side] += 1
        sums["e", side] += float(hits[q])
        sums["r", side] += float(ref[q])
    if not counts[True] or not counts[False]:
        return float("nan")
    gap = sums["e", True] / counts[True] - sums["e", False] / counts[False]
    return gap - (sums["r", True] / counts[True] - sums["r", False] / counts[False])


def test_delta_by_hand():
    # head queries 0-2, tail 3-6. Encoder: head 2/3, tail 1/4; S1: head 1/3, tail 2/4
    hits = [1, 1, 0, 1, 0, 0, 0]
    ref = [1, 0, 0, 1, 1, 0, 0]
    head = [True, True, True, False, False, False, False]
    r = selection_bias_gap(hits, ref, head, n_boot=50)
    assert r["head_hr"] == pytest.approx(2 / 3) and r["tail_hr"] == pytest.approx(1 / 4)
    assert r["head_hr_ref"] == pytest.approx(1 / 3) and r["tail_hr_ref"] == pytest.approx(2 / 4)
    assert r["gap"] == pytest.approx(2 / 3 - 1 / 4)
    assert r["delta"] == pytest.approx((2 / 3 - 1 / 4) - (1 / 3 - 2 / 4))
    assert (r["n_head"], r["n_tail"]) == (3, 4)


def test_paired_bootstrap_matches_a_loop_over_the_same_draws():
    rng = np.random.default_rng(3)
    n, n_boot, seed = 60, 200, 11
    head = rng.random(n) < 0.3
    hits = rng.random(n) < np.where(head, 0.6, 0.3)
    ref = np.where(rng.random(n) < 0.3, rng.random(n) < 0.4, hits)
    got = selection_bias_gap(hits, ref, head, n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed)
    boots = [brute_gap(hits, ref, head, draws.integers(0, n, size=n)) for _ in range(n_boot)]
    boots = np.array([b for b in boots if np.isfinite(b)])
    assert got["n_boot"] == len(boots)
    assert got["delta"] == pytest.approx(brute_gap(hits, ref, head, range(n)))
    assert got["ci95"] == pytest.approx(list(np.quantile(boots, [0.025, 0.975])), abs=1e-12)
    # paired: an encoder equal to S1 has Δ = 0 in every resample, so a zero-width CI
    same = selection_bias_gap(hits, hits, head, n_boot=n_boot, seed=seed)
    assert same["delta"] == 0.0 and same["ci95"] == [0.0, 0.0]
    # seeded: the same seed gives the same interval
    assert selection_bias_gap(hits, ref, head, n_boot=n_boot, seed=seed)["ci95"] == got["ci95"]


def test_head_share_of_tail_queries_top10():
    head = np.array([True, False, False])
    share = np.array([0.9, 0.2, 0.4])
    share_ref = np.array([0.0, 0.1, 0.1])
    r = selection_bias_gap([1, 0, 1], [1, 1, 0], head, share, share_ref, n_boot=10)
    assert r["tail_top10_head_share"] == pytest.approx(0.3)
    assert r["tail_top10_head_share_ref"] == pytest.approx(0.1)
    assert r["tail_top10_head_share_diff"] == pytest.approx(0.2)


def test_refuses_without_head_or_tail_queries_and_bad_shapes():
    with pytest.raises(InputError, match="no tail target"):
        selection_bias_gap([1, 0], [0, 0], [True, True])
    with pytest.raises(ValueError, match="one value per retrieval query"):
        selection_bias_gap([1, 0], [0, 0, 1], [True, False])
