"""The world knobs of the selection-bias search (docs/results.md, "When does S3 help?"):
at their defaults the world is byte-identical to the one before they existed; on, each
does what it says, from a random stream of its own."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from visctr.errors import InputError
from visctr.world import World
from visctr.world.simulate import SimConfig, simulate_arrays, write_world

from ..conftest import synthetic_catalog, tiny_sim_config

# sha256 of the tiny world (seed 0) computed on the code before these knobs existed
# (commit acbbd43): every Parquet column, every image store and the summary less its time
TINY_WORLD_DIGEST = "a81579dd038f13d904381852711243380d05819f783e2554fdfd6aae5534a36a"


def world_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.parquet")):
        t = pq.read_table(f)
        for c in sorted(t.column_names):
            h.update(f"{f.relative_to(root)}:{c}".encode())
            h.update(repr(t.column(c).to_pylist()).encode())
    for f in sorted(root.rglob("*.npy")):
        h.update(np.load(f).tobytes())
    summary = json.loads((root / "world.json").read_text())["summary"]
    summary.pop("seconds")
    h.update(json.dumps(summary, sort_keys=True).encode())
    return h.hexdigest()


def _world(tmp_path: Path, name: str, cfg: SimConfig, seed: int = 0) -> World:
    out = tmp_path / name
    write_world(simulate_arrays(cfg, seed, synthetic_catalog()), cfg, seed, out)
    return World.load(out)


@pytest.fixture(scope="module")
def default_world(tmp_path_factory) -> World:
    return _world(tmp_path_factory.mktemp("knobs"), "default", tiny_sim_config())


def test_default_knobs_leave_the_world_byte_identical(default_world):
    assert world_digest(default_world.root) == TINY_WORLD_DIGEST


def test_hidden_categories_are_never_shown_and_still_targeted(tmp_path, default_world):
    cfg = tiny_sim_config()
    cfg.logging.hidden_categories = 2
    w = _world(tmp_path, "hidden", cfg)
    summary = w.meta["summary"]
    hidden = [w.meta["category_names"].index(c) for c in summary["hidden_categories"]]
    assert len(hidden) == 2
    cats = dict(zip(w.items["item_id"].tolist(), w.items["category"].tolist(), strict=True))
    in_hidden = np.isin(np.arange(w.n_categories), hidden)
    for split in ("train", "test"):
        shown = w.read_impressions(split)["item_id"]
        assert not in_hidden[[cats[i] for i in shown]].any(), split
    rnd = w.read_impressions("random")["item_id"]
    assert in_hidden[[cats[i] for i in rnd]].mean() > 0.2  # 2 of 5 categories, uniform
    # who photographs what is the same world: queries, targets and random exposure
    for col in ("query_id", "user_id", "target_item_id", "timestamp", "split"):
        assert np.array_equal(w.queries[col], default_world.queries[col]), col
    assert np.array_equal(rnd, default_world.read_impressions("random")["item_id"])
    assert np.array_equal(w.query_images[:], default_world.query_images[:])
    targets = w.queries["target_item_id"][w.queries["split"] == "train"]
    assert in_hidden[[cats[i] for i in targets]].mean() > 0.2
    assert summary["hidden_items_share"] == pytest.approx(in_hidden[w.items["category"]].mean())


def test_hidden_categories_must_leave_something_to_show():
    cfg = tiny_sim_config()
    cfg.logging.hidden_categories = 5  # the synthetic catalog has 5
    with pytest.raises(InputError, match="hidden_categories=5"):
        simulate_arrays(cfg, 0, synthetic_catalog())
    with pytest.raises(ValueError, match="hidden_categories"):
        SimConfig().logging.__class__(hidden_categories=-1)


def test_extra_retrieval_queries_come_after_everything_else(tmp_path, default_world):
    cfg = tiny_sim_config()
    cfg.extra_retrieval_queries = 300
    w = _world(tmp_path, "extra", cfg)
    n0 = len(default_world.queries["query_id"])
    assert len(w.queries["query_id"]) == n0 + 300
    for col in ("query_id", "user_id", "target_item_id", "timestamp", "split"):
        assert np.array_equal(w.queries[col][:n0], default_world.queries[col]), col
    assert (w.queries["split"][n0:] == "retrieval").all()
    assert np.array_equal(w.query_images[:n0], default_world.query_images[:])
    for split in ("train", "test", "random"):
        a, b = w.read_impressions(split), default_world.read_impressions(split)
        assert all(np.array_equal(a[c], b[c]) for c in a), split
    extra = w.queries["target_item_id"][n0:]
    assert len(np.unique(extra)) > 150  # uniform over 300 items, not one item repeated
    assert w.meta["summary"]["queries"]["retrieval"] == 120 + 300
    # their photos are photos of their targets: nearer their own item than a random one
    rows = np.searchsorted(w.items["item_id"], extra)
    q = w.query_images[n0:].reshape(300, -1).astype(np.float32)
    items = w.item_images[:].reshape(len(w.items["item_id"]), -1).astype(np.float32)
    own = np.linalg.norm(q - items[rows], axis=1)
    other = np.linalg.norm(q - items[np.roll(rows, 1)], axis=1)
    assert (own < other).mean() > 0.8


def test_the_ab_tests_legacy_arm_hides_what_the_logging_policy_hid(tmp_path):
    """The A/B test's and OPE's legacy policy is the one that wrote the log: it never
    shows a hidden category either, ranked by score or by eCPM."""
    from visctr.eval import abtest as ab

    cfg = tiny_sim_config()
    cfg.logging.hidden_categories = 2
    w = _world(tmp_path, "hidden", cfg)
    hidden = np.isin(
        w.items["category"],
        [w.meta["category_names"].index(c) for c in w.meta["summary"]["hidden_categories"]],
    )
    traffic = ab.simulate_traffic(w, 300, 0)
    for bid in (None, np.asarray(w.items["bid"])):
        shown = ab.legacy_policy(w, traffic, 5, bid)
        assert shown.shape == (300, 5) and not hidden[shown].any()
    # and the world without the knob does show those categories
    plain = _world(tmp_path, "plain", tiny_sim_config())
    assert hidden[ab.legacy_policy(plain, ab.simulate_traffic(plain, 300, 0), 5)].any()


def test_hidden_items_stay_hidden_whatever_the_popularity_boost(tmp_path):
    cfg = tiny_sim_config()
    cfg.logging.hidden_categories = 2
    cfg.logging.popularity_boost = 3.0  # the boost alone could lift an item over any cosine
    w = _world(tmp_path, "boost", cfg)
    hidden = np.isin(
        w.items["category"],
        [w.meta["category_names"].index(c) for c in w.meta["summary"]["hidden_categories"]],
    )
    rows = np.searchsorted(w.items["item_id"], w.read_impressions("train")["item_id"])
    assert not hidden[rows].any()


def test_too_few_items_left_to_show_is_refused_before_any_photo(monkeypatch):
    from visctr.world import simulate as sim

    cfg = tiny_sim_config()
    cfg.logging.hidden_categories = 4  # 60 of 300 items left
    cfg.logging.top_k = 61
    monkeypatch.setattr(sim, "_photograph_all", lambda *a, **k: pytest.fail("photographed"))
    with pytest.raises(InputError, match="leaves 60 items to show, fewer than top_k=61"):
        simulate_arrays(cfg, 0, synthetic_catalog())
