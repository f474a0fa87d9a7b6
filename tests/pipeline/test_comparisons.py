"""Paired comparisons: the t quantile, the paired interval by hand, results.json's rows."""

from __future__ import annotations

import math

import pytest

from visctr.pipeline.results import comparisons, paired_ci, t_quantile


@pytest.mark.parametrize(
    ("df", "want"),
    [(1, 12.706205), (2, 4.302653), (4, 2.776445), (8, 2.306004), (30, 2.042272)],
)
def test_t_quantile_matches_the_tables(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-5)


def test_paired_ci_by_hand():
    a = [0.71, 0.74, 0.70, 0.73]
    b = [0.70, 0.71, 0.70, 0.70]
    # differences 0.01, 0.03, 0.00, 0.03: mean 0.0175, sd = sqrt(0.000675 / 3) = 0.015
    r = paired_ci(a, b)
    assert r["n"] == 4
    assert r["per_seed"] == pytest.approx([0.01, 0.03, 0.0, 0.03])
    assert r["mean_diff"] == pytest.approx(0.0175)
    half = 3.182446 * 0.015 / 2  # t_{0.975, 3} · sd / √4
    assert r["ci95"] == pytest.approx([0.0175 - half, 0.0175 + half], abs=1e-6)


def test_paired_ci_drops_missing_pairs_and_needs_two():
    r = paired_ci([0.5, None, float("nan"), 0.7], [0.4, 0.3, 0.2, 0.5])
    assert r["n"] == 2 and r["per_seed"] == pytest.approx([0.1, 0.2])
    one = paired_ci([0.5], [0.4])
    assert one["n"] == 1 and one["ci95"] is None and one["mean_diff"] == pytest.approx(0.1)
    assert paired_ci([], [])["mean_diff"] is None


def test_comparisons_pair_each_metric_by_replicate():
    def entry(vals):
        return {"mean": sum(vals) / len(vals), "std": 0.0, "per_seed": vals}

    results = {
        "methods": {
            "S1+S2+D": {"auc_random_exposure": entry([0.72, 0.73, 0.74])},
            "S1+S2+H": {"auc_random_exposure": entry([0.71, 0.73, 0.72])},
        },
        "ab_test": {"methods": {"S1+S2+D": {"ctr": entry([0.12, 0.13, 0.11])},
                                "S1+S2+H": {"ctr": entry([0.11, 0.12, 0.12])}}},
    }  # fmt: skip
    rows = comparisons(results)
    got = {(r["a"], r["b"], r["metric"]): r for r in rows}
    assert set(got) == {
        ("S1+S2+D", "S1+S2+H", "auc_random_exposure"),
        ("S1+S2+D", "S1+S2+H", "ab_ctr"),
    }  # pairs and metrics the results lack are left out
    r = got[("S1+S2+D", "S1+S2+H", "ab_ctr")]
    assert r["per_seed"] == pytest.approx([0.01, 0.01, -0.01])
    assert r["n"] == 3 and r["ci95"][0] < r["mean_diff"] < r["ci95"][1]
    assert math.isclose(r["mean_diff"], 0.01 / 3, rel_tol=1e-9)


def _entry(vals):
    return {"mean": sum(vals) / len(vals), "std": 0.0, "per_seed": vals}


def test_interval_runs_over_encoder_seed_means():
    # 3 encoder seeds × 2 CTR seeds; the CTR seeds of an encoder seed are averaged first
    d = [0.72, 0.74, 0.70, 0.70, 0.75, 0.73]
    h = [0.70, 0.70, 0.70, 0.69, 0.71, 0.71]
    results = {
        "replicates": [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]],
        "methods": {"S1+S2+D": {"hr@10": _entry(d)}, "S1+S2+H": {"hr@10": _entry(h)}},
    }
    (r,) = comparisons(results)
    diffs = [x - y for x, y in zip(d, h, strict=True)]
    means = [(diffs[0] + diffs[1]) / 2, (diffs[2] + diffs[3]) / 2, (diffs[4] + diffs[5]) / 2]
    mean = sum(means) / 3
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t_{0.975, 2}: n = 3 encoder seeds, not 6
    assert r["n"] == 3 and r["n_replicates"] == 6
    assert r["interval"] == "t over encoder-seed means"
    assert r["per_seed"] == pytest.approx(diffs)  # per replicate, as before
    assert r["per_encoder_seed"] == pytest.approx(means)
    assert r["mean_diff"] == pytest.approx(mean)
    assert r["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-6)


def test_one_ctr_seed_per_encoder_gives_the_replicate_interval():
    d, h = [0.72, 0.73, 0.74, 0.70], [0.71, 0.73, 0.72, 0.70]
    results = {
        "replicates": [[0, 0], [1, 0], [2, 0], [3, 0]],
        "methods": {"S1+S2+D": {"hr@10": _entry(d)}, "S1+S2+H": {"hr@10": _entry(h)}},
    }
    (r,) = comparisons(results)
    diffs = [x - y for x, y in zip(d, h, strict=True)]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3)
    half = 3.182446 * sd / 2  # t_{0.975, 3} · sd / √4, over the replicates themselves
    assert r["n"] == 4 and r["mean_diff"] == pytest.approx(mean)
    assert r["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-6)
    # and equal to the interval without replicate information
    del results["replicates"]
    assert comparisons(results)[0]["ci95"] == pytest.approx(r["ci95"], abs=1e-12)
