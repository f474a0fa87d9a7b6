"""The CTR side of the bias (``visctr.eval.bias.ctr_head_tail``): head and tail AUC and
calibration by hand, the paired query bootstrap of the gap against a loop over the same
resampled queries, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from visctr.errors import InputError
from visctr.eval.bias import _WeightedAUC, ctr_head_tail
from visctr.metrics import auc


def test_head_and_tail_by_hand():
    y = [1, 0, 0, 1, 0, 1, 0, 0]
    p = [0.9, 0.2, 0.3, 0.1, 0.5, 0.6, 0.4, 0.2]
    head = [True, True, True, False, False, False, False, False]
    r = ctr_head_tail(y, p, head, [0, 0, 1, 1, 2, 2, 3, 3])
    assert r["auc_head"] == 1.0  # 0.9 above 0.2 and 0.3
    assert r["auc_tail"] == pytest.approx(3 / 6)  # 0.1 below all 3 negatives; 0.6 above all 3
    assert r["gap"] == pytest.approx(1 - 3 / 6)
    assert r["calibration_head"] == pytest.approx((1.4 / 3) / (1 / 3))
    assert r["calibration_tail"] == pytest.approx((1.8 / 5) / (2 / 5))
    assert r["calibration_tail_over_head"] == pytest.approx(
        r["calibration_tail"] / r["calibration_head"]
    )
    assert (r["n_head"], r["n_tail"], r["clicks_head"], r["clicks_tail"]) == (3, 5, 1, 2)
    assert "gap_delta" not in r


def test_weighted_auc_equals_auc_on_repeated_rows():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.2).astype(int)
    s = np.round(rng.random(500) + 0.3 * y, 2)  # many ties
    w = rng.integers(0, 4, 500)
    rep = np.repeat(np.arange(500), w)
    assert _WeightedAUC(y, s)(w.astype(float)) == pytest.approx(auc(y[rep], s[rep]), abs=1e-12)


def test_paired_bootstrap_matches_a_loop_over_the_same_queries():
    rng = np.random.default_rng(5)
    n_q, k, n_boot, seed = 40, 6, 60, 9
    q = np.repeat(np.arange(n_q) * 7 + 3, k)  # any ids
    head = rng.random(n_q * k) < 0.4
    y = (rng.random(n_q * k) < 0.25).astype(int)
    p = rng.random(n_q * k) + 0.4 * y * head  # better on head items
    ref = rng.random(n_q * k) + 0.4 * y
    got = ctr_head_tail(y, p, head, q, ref, n_boot=n_boot, seed=seed)
    qids = np.unique(q)
    draws = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        rows = np.concatenate([np.flatnonzero(q == qids[i]) for i in draws.integers(0, n_q, n_q)])
        yy, hh = y[rows], head[rows]
        gap = auc(yy[hh], p[rows][hh]) - auc(yy[~hh], p[rows][~hh])
        gap_ref = auc(yy[hh], ref[rows][hh]) - auc(yy[~hh], ref[rows][~hh])
        boots.append(gap - gap_ref)
    boots = np.array([b for b in boots if np.isfinite(b)])
    assert got["gap_delta"] == pytest.approx(
        (auc(y[head], p[head]) - auc(y[~head], p[~head]))
        - (auc(y[head], ref[head]) - auc(y[~head], ref[~head]))
    )
    assert got["ci95"] == pytest.approx(list(np.quantile(boots, [0.025, 0.975])), abs=1e-12)
    # paired: a model equal to its reference differs by 0 in every resample
    same = ctr_head_tail(y, p, head, q, p, n_boot=n_boot, seed=seed)
    assert same["gap_delta"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_refusals():
    with pytest.raises(InputError, match="needs tail items"):
        ctr_head_tail([0, 1], [0.1, 0.2], [True, True], [0, 1])
    with pytest.raises(ValueError, match="one value per impression"):
        ctr_head_tail([0, 1], [0.1], [True, False], [0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        ctr_head_tail([0, 2], [0.1, 0.2], [True, False], [0, 1])
    with pytest.raises(ValueError, match="probs_ref"):
        ctr_head_tail([0, 1], [0.1, 0.2], [True, False], [0, 1], [0.3])
