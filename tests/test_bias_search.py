"""scripts/bias_search.py: the pre-registered gate, and the search end to end on the tiny
preset (one world setting and one encoder setting, which exercises every stage)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "bias_search.py"


@pytest.fixture(scope="module")
def bs():
    spec = importlib.util.spec_from_file_location("bias_search", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bias_search"] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bias_search", None)


def _row(delta, lo, gap_delta=0.0, gap_lo=-0.01):
    return {
        "delta_s2": {"delta": delta, "ci95": [lo, delta + 0.02]},
        "ctr_s2_vs_s1": {"gap_delta": gap_delta, "ci95": [gap_lo, gap_delta + 0.02]},
    }


def test_gate_needs_both_dev_worlds(bs):
    ok = _row(0.06, 0.04)
    assert bs.gate({100: ok, 101: ok}) == {
        "complete": True,
        "G1": True,
        "G2": False,
        "passes": True,
    }
    assert not bs.gate({100: ok, 101: _row(0.034, 0.015)})["passes"]  # below 0.05 on one
    assert not bs.gate({100: ok, 101: _row(0.06, -0.001)})["passes"]  # CI reaches 0
    assert not bs.gate({100: ok})["passes"] and not bs.gate({100: ok})["complete"]
    ctr = _row(0.0, -0.02, gap_delta=0.03, gap_lo=0.001)
    assert bs.gate({100: ctr, 101: ctr}) == {
        "complete": True,
        "G1": False,
        "G2": True,
        "passes": True,
    }
    assert not bs.gate({100: ctr, 101: _row(0.0, -0.02, 0.019, 0.001)})["passes"]


@pytest.mark.slow
def test_search_runs_end_to_end_on_tiny(bs, tmp_path):
    from visctr.data.catalog import find_fashion_mnist_dir
    from visctr.errors import InputError

    try:
        find_fashion_mnist_dir(None)
    except InputError as e:
        pytest.skip(str(e))
    out = tmp_path / "search"
    args = ["--out", str(out), "--preset", "tiny", "--extra-retrieval", "200", "--seed", "100"]
    assert bs.main([*args, "--settings", "a2", "c2"]) == 0
    a2 = json.loads((out / "seed100" / "a2.json").read_text())
    assert (
        a2["world_summary"]["hidden_categories"]
        and len(a2["world_summary"]["hidden_categories"]) == 3
    )
    assert a2["world_summary"]["queries"]["retrieval"] == 400 + 200
    d = a2["delta_s2"]
    assert d["ci95"][0] <= d["delta"] <= d["ci95"][1] and d["n_head"] + d["n_tail"] == 600
    assert "ctr_item_id_vs_s1" in a2
    c2 = json.loads((out / "seed100" / "c2.json").read_text())
    assert "ctr_item_id_vs_s1" not in c2  # an encoder setting: the world's S1 CTR is reused
    assert (out / "seed100" / "s1-embed_dim16-width4" / "encoder.pt").is_file()
    res = bs.summary(out, tmp_path / "summary")
    assert set(res["settings"]) == {"a2", "c2"} and not res["settings"]["a2"]["gate"]["complete"]
    assert "| a2 |" in (tmp_path / "summary" / "report.md").read_text()
