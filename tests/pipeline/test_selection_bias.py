"""results.json["selection_bias"]: per-query hits from ranked rows on a toy world, the
spaces measured, the aggregate over encoder seeds, the report's table and plot, and the
skip on a world without labelled retrieval queries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visctr.eval.bias import selection_bias_gap
from visctr.pipeline.bias import aggregate_selection, selection_rows, selection_spaces
from visctr.pipeline.config import resolve_run_config
from visctr.pipeline.report import _selection_bias_plot, _selection_bias_section
from visctr.pipeline.results import t_quantile
from visctr.pipeline.run import skipped_metrics


class ToyWorld:
    """6 items (ids 10..15, 10 and 11 head); 8 retrieval queries among 2 training ones."""

    def __init__(self, labelled: bool = True):
        self.items = {"item_id": np.arange(10, 16), "is_head": np.array([1, 1, 0, 0, 0, 0], bool)}
        split = ["train", "train"] + ["retrieval" if labelled else "test"] * 8
        self.queries = {
            "query_id": np.arange(100, 110),
            "target_item_id": np.array([10, 12, 10, 11, 12, 13, 14, 15, 10, 13]),
            "split": np.array(split),
        }
        self.has_retrieval_labels = labelled
        self.has_random_exposure = True
        self.ground_truth = True

    def query_rows(self, split):
        return np.flatnonzero(self.queries["split"] == split)


def test_rows_come_from_the_ranked_rows_of_each_space():
    world = ToyWorld()
    targets = np.array([0, 1, 2, 3, 4, 5, 0, 3])  # item rows of the 8 retrieval queries
    tops = {
        "S2": np.column_stack([targets, np.full((8, 9), 4)]),  # finds every target
        "S1": np.full((8, 10), 5),  # ranks item 5 (tail) only: hits where the target is 5
        "S1+S2+D": np.full((8, 10), 0),
    }
    got = selection_rows(world, tops, {"S2": "s2", "S1+S2+D": "S1+S2+D gated"}, seed=4)
    is_head = targets < 2
    s2_hits, s1_hits = np.ones(8, bool), targets == 5
    want = selection_bias_gap(s2_hits, s1_hits, is_head, (targets < 2) / 10, np.zeros(8), seed=4)
    assert got["S2"] == {**want, "n_queries": 8, "representation_bias": "s2"}
    # 3 head targets, 5 tail ones (one of them item 5): (1 − 1) − (0 − 1/5)
    assert got["S2"]["delta"] == pytest.approx(0.2)
    assert got["S2"]["tail_top10_head_share_diff"] == 0.0
    assert set(got) == {"S2", "S1+S2+D"}


def test_spaces_are_the_encoders_but_s1_and_the_s3_heads():
    cfg = resolve_run_config("tiny", None)
    first = selection_spaces(cfg, 0)
    assert first == {
        "ResNet-C": "resnet_c",
        "S2": "s2",
        "S1+S2": "s1_s2",
        "S1+S2+H": "S1+S2+H gated",
        "S1+S2+D": "S1+S2+D gated",
    }
    assert selection_spaces(cfg, 1) == {"S1+S2+H": "S1+S2+H gated", "S1+S2+D": "S1+S2+D gated"}


def _row(delta, ci=(-0.1, 0.1)):
    keys = ("gap", "gap_ref", "head_hr", "tail_hr", "head_hr_ref", "tail_hr_ref")
    return {
        "delta": delta,
        "ci95": list(ci),
        **dict.fromkeys(keys, 0.5),
        "tail_top10_head_share_diff": 0.01,
        "n_queries": 8,
        "representation_bias": "S1+S2+D gated",
    }


def test_aggregate_averages_ctr_seeds_then_a_t_interval_over_encoder_seeds():
    deltas = [0.01, 0.03, -0.02, 0.00, 0.05, 0.04]  # encoder seeds 0, 0, 1, 1, 2, 2
    rows = [{"S1+S2+D": _row(d)} for d in deltas]
    agg = aggregate_selection(rows, [0, 0, 1, 1, 2, 2])["S1+S2+D"]
    means = [0.02, -0.01, 0.045]
    m = sum(means) / 3
    half = t_quantile(0.975, 2) * math.sqrt(sum((x - m) ** 2 for x in means) / 2) / math.sqrt(3)
    assert agg["delta"]["per_seed"] == pytest.approx(deltas)
    assert agg["delta"]["per_encoder_seed"] == pytest.approx(means)
    assert agg["delta"]["ci95"] == pytest.approx([m - half, m + half])
    assert agg["ci95_per_seed"] == [[-0.1, 0.1]] * 6 and agg["n_queries"] == 8


def test_report_section_and_plot(tmp_path):
    one = aggregate_selection([{"S2": _row(0.02, (-0.01, 0.05))}], [0])
    results = {
        "selection_bias": one,
        "representation_bias": {
            "S1+S2+D gated": {"overlap_head": {"mean": 0.5, "std": 0.0, "per_seed": [0.5]}}
        },
    }
    text = "\n".join(_selection_bias_section(results))
    assert "| S2 | 0.020 | [-0.010, +0.050] (bootstrap over queries) |" in text
    assert "| 0.500 | — |" in text  # overlap@20 read from representation_bias
    _selection_bias_plot(one, tmp_path / "sb.png")
    assert (tmp_path / "sb.png").stat().st_size > 1000
    assert _selection_bias_section({"selection_bias": {}}) == []


def test_skipped_without_labelled_retrieval_queries():
    assert "selection_bias" in skipped_metrics(ToyWorld(labelled=False))
    assert "selection_bias" not in skipped_metrics(ToyWorld())


def test_ctr_head_tail_skipped_without_a_random_exposure_log():
    world = ToyWorld()
    assert "ctr_head_tail" not in skipped_metrics(world)
    world.has_random_exposure = False
    assert "ctr_head_tail" in skipped_metrics(world)


def test_ctr_head_tail_aggregate_takes_the_encoder_seed_as_the_unit():
    from visctr.pipeline.bias import CTR_FIELDS, aggregate_ctr_head_tail

    def row(delta):
        return {"S2": {**dict.fromkeys(CTR_FIELDS, 0.5), "gap_delta": delta, "ci95": [-1, 1],
                       "n_head": 3, "n_tail": 7}}  # fmt: skip

    # encoder seed 0 with CTR seeds giving 0.1 and 0.3, seed 1 with 0.5 and 0.7
    agg = aggregate_ctr_head_tail([row(0.1), row(0.3), row(0.5), row(0.7)], [0, 0, 1, 1])
    d = agg["S2"]["gap_delta"]
    assert d["per_encoder_seed"] == pytest.approx([0.2, 0.6])
    half = t_quantile(0.975, 1) * np.std([0.2, 0.6], ddof=1) / math.sqrt(2)
    assert d["ci95"] == pytest.approx([0.4 - half, 0.4 + half])
    assert d["mean"] == pytest.approx(0.4) and len(d["per_seed"]) == 4
    assert agg["S2"]["ci95_per_seed"] == [[-1, 1]] * 4
