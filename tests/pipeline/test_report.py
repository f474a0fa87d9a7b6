"""``report.md`` and its plots from a results dict, without training anything."""

from __future__ import annotations

import re

import numpy as np

from visctr.pipeline.config import resolve_run_config
from visctr.pipeline.layout import RunLayout
from visctr.pipeline.report import write_report
from visctr.pipeline.results import BY_CATEGORY, METRICS, aggregate, format_table
from visctr.world import World

NAMES = ("A", "B+C")


def _results(world: World) -> dict:
    rng = np.random.default_rng(0)
    return {
        "preset": "tiny",
        "seeds": 2,
        "world_seed": 0,
        "training_seeds": [0, 1],
        "methods": {
            m: {k: aggregate(list(rng.uniform(0.1, 0.9, 2))) for k in METRICS} for m in NAMES
        },
        "random_exposure_by_category": {
            m: {k: aggregate(list(rng.uniform(0.1, 0.9, 2))) for k in BY_CATEGORY} for m in NAMES
        },
        "world": world.meta["summary"],
        "timings_s": {"world": 1.0, "total": 2.0},
    }


def test_report_has_the_table_descriptions_and_plots(tiny_world_dir, tmp_path):
    world = World.load(tiny_world_dir)
    results = _results(world)
    n_items = len(world.items["item_id"])
    n_q = len(world.query_rows("retrieval"))
    tops = {m: np.random.default_rng(1).integers(0, n_items, (n_q, 10)) for m in NAMES}
    layout = RunLayout(tmp_path / "run")
    curves = {"A": {0: [{"epoch": 1, "loss": 2.0, "knn_acc": 0.3}, {"epoch": 2, "loss": 1.5}]}}
    write_report(
        layout, results, world, tops, curves, resolve_run_config("tiny"), {"A": "first", "B+C": "x"}
    )
    text = layout.report.read_text()
    assert format_table(results, markdown=True) in text
    assert "- **A**: first" in text and "- **B+C**: x" in text
    assert "### Random exposure by category" in text
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert len(links) == 4
    for link in links:
        assert (layout.root / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link


def test_table_rows_follow_the_results_and_missing_values_print_na():
    entry = {"mean": 0.5, "std": 0.01, "per_seed": [0.49, 0.51]}
    results = {"methods": {"Z": dict.fromkeys(METRICS, entry), "A": dict.fromkeys(METRICS, entry)}}
    results["methods"]["A"] = {**results["methods"]["A"], "auc": aggregate([float("nan")])}
    table = format_table(results, markdown=True).splitlines()
    assert [r.split(" | ")[0] for r in table[2:]] == ["| Z", "| A"]
    assert "n/a" in table[3] and "0.500 ± 0.010" in table[2]
    assert aggregate([1.0, float("nan"), 3.0]) == {
        "mean": 2.0,
        "std": float(np.std([1.0, 3.0], ddof=1)),
        "per_seed": [1.0, None, 3.0],
    }


def test_one_seed_prints_no_spread():
    """A 1-seed figure is its value alone: ``± 0.000`` would claim a spread of zero."""
    from visctr.pipeline.abtest import format_ab_table
    from visctr.pipeline.results import fmt, fmt_pct

    one, two = aggregate([0.51234]), aggregate([0.5, 0.6])
    assert fmt(one) == "0.512" and fmt(two) == "0.550 ± 0.071"
    assert fmt_pct(aggregate([0.0312])) == "+3.1%"
    assert fmt_pct(aggregate([0.01, 0.03])) == "+2.0% ± 1.4%"
    assert fmt_pct({"mean": None}) == "—"
    table = format_table({"methods": {"A": dict.fromkeys(METRICS, one)}})
    assert "±" not in table and "0.512" in table
    none = {"mean": None, "std": None, "per_seed": [None]}
    ab = {
        "methods": {
            "S2": {
                "ctr": aggregate([0.1]),
                "lift_vs_S2": none,
                "lift_vs_legacy": aggregate([0.02]),
                "oracle_share": aggregate([0.4]),
                "tail_exposure_share": aggregate([0.7]),
            }
        }
    }
    text = format_ab_table(ab)
    assert "±" not in text and "0.1000" in text and "+2.0%" in text
