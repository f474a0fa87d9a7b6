"""Bids, eCPM ranking and revenue (RPM) in the simulated A/B test, against hand
computations; and the guarantee that bids change nothing else in a world."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from visctr.eval import abtest as ab
from visctr.world import World

# Computed on the code before bids existed (commit 0de235e) with the same functions as
# below: the tiny world's every array, and a tiny A/B test's CTRs. Bids come from a random
# stream of their own, so neither may move.
WORLD_DIGEST = "fa49edfc06573d6c9efceb9f41bf30151646af118b76292f8def7d43fd7c5548"
AB_CTRS = {
    "legacy": (0.12742941132924993, 0.11666666666666667),
    "oracle": (0.21857648108040523, 0.21666666666666667),
    "retrieval": (0.06803158618454469, 0.06333333333333334),
}


def world_digest(root: Path) -> str:
    """sha256 over every Parquet column (but ``items.bid``) and every image store."""
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.parquet")):
        t = pq.read_table(f)
        for c in sorted(t.column_names):
            if f.name == "items.parquet" and c == "bid":
                continue
            h.update(f"{f.relative_to(root)}:{c}".encode())
            h.update(repr(t.column(c).to_pylist()).encode())
    for f in sorted(root.rglob("*.npy")):
        h.update(np.load(f).tobytes())
    return h.hexdigest()


def test_bids_leave_every_other_array_and_every_ab_ctr_unchanged(tiny_world_dir, world, traffic):
    from visctr.world.simulate import pixel_vectors

    assert world_digest(tiny_world_dir) == WORLD_DIGEST
    clicks = ab.ClickModel(world, traffic)
    iv = pixel_vectors(world.item_images, np.asarray(world.items["image_row"])).numpy()
    qv = pixel_vectors(np.asarray(traffic.images)).numpy()
    policies = {
        "legacy": ab.legacy_policy(world, traffic, 5),
        "oracle": clicks.best(5),
        "retrieval": ab.retrieve_and_rerank(qv, iv, 20, 5, lambda c: -(c % 7).astype(float)),
    }
    for name, shown in policies.items():
        f = ab.score_policy(clicks, shown, 0)
        assert (f.ctr, f.ctr_sampled) == AB_CTRS[name], name


def test_bids_are_lognormal_per_category_reproducible_and_can_follow_popularity():
    from visctr.world.simulate import SimConfig, draw_bids

    rng = np.random.default_rng(0)
    cats = np.repeat(np.arange(4), 5000)
    pop = rng.pareto(1.0, cats.size) + 1e-3
    cfg = SimConfig(bid_median=0.5, bid_sigma=0.3, bid_category_spread=0.8)
    bid = draw_bids(cats, 4, pop, cfg, seed=3)
    assert (bid > 0).all() and np.isfinite(bid).all()
    assert np.array_equal(bid, draw_bids(cats, 4, pop, cfg, seed=3))
    assert not np.array_equal(bid, draw_bids(cats, 4, pop, cfg, seed=4))
    medians = np.array([np.median(bid[cats == c]) for c in range(4)])
    assert medians.max() / medians.min() > 1.5  # some categories pay more
    within = np.std(np.log(bid[cats == 0]))
    assert within == pytest.approx(0.3, rel=0.05)
    assert abs(np.corrcoef(np.log(bid), np.log(pop))[0, 1]) < 0.05
    tied = draw_bids(cats, 4, pop, SimConfig(bid_popularity_correlation=0.9), seed=3)
    resid = np.log(tied) - np.log(tied).mean()  # the category factor is noise around it
    assert np.corrcoef(resid, np.log(pop))[0, 1] > 0.5


class _Slate:
    """A click model stub: fixed probabilities per slot and bids per item."""

    def __init__(self, p: np.ndarray, bid: np.ndarray | None) -> None:
        self.p, self.bid = p, bid

    def probability(self, shown: np.ndarray) -> np.ndarray:
        return self.p


def test_rpm_is_expected_clicks_times_bid_per_mille_impressions():
    shown = np.array([[0, 1, 2], [2, 3, 0]])
    p = np.array([[0.5, 0.2, 0.1], [0.3, 0.0, 0.05]])
    bid = np.array([2.0, 1.0, 4.0, 10.0])
    f = ab.score_policy(_Slate(p, bid), shown, seed=0)
    # by hand: query 0 = .5·2 + .2·1 + .1·4 = 1.6; query 1 = .3·4 + 0·10 + .05·2 = 1.3
    assert f.revenue == pytest.approx([1.6, 1.3])
    assert f.rpm == pytest.approx(1000 * 2.9 / 6)
    assert f.ctr == pytest.approx(1.15 / 6)
    # sampled revenue: the sampled clicks (the same draws as the sampled CTR) times bids
    rng = np.random.default_rng([0, ab.TRAFFIC_STREAM, 1])
    clicked = rng.random(p.shape) < p
    assert f.rpm_sampled == pytest.approx(1000 * (clicked * bid[shown]).sum() / 6)
    assert f.sampled.tolist() == clicked.sum(1).tolist()
    assert ab.score_policy(_Slate(p, None), shown, 0).rpm is None
    base = ab.score_policy(_Slate(p / 2, bid), shown, seed=0)
    rows = ab.summarise({"S2": base, "x": f}, np.zeros(4, bool), ("S2",), 0)
    assert rows["x"]["rpm_lift_vs_S2"] == pytest.approx(1.0)
    assert rows["x"]["rpm_lift_vs_S2_ci_low"] == pytest.approx(1.0)


def test_ecpm_ranks_a_high_bid_item_above_a_higher_pctr_one_when_pctr_times_bid_says_so():
    items = np.eye(4, dtype=np.float32)
    query = np.array([[1.0, 0.9, 0.8, 0.0]], np.float32)  # candidates 0, 1, 2 by cosine
    logit = {0: np.log(0.2 / 0.8), 1: np.log(0.1 / 0.9), 2: np.log(0.05 / 0.95), 3: 0.0}

    def score(cand: np.ndarray) -> np.ndarray:
        return np.vectorize(logit.get)(cand).astype(float)

    by_ctr = ab.retrieve_and_rerank(query, items, 3, 3, score)
    assert by_ctr[0].tolist() == [0, 1, 2]
    bid = np.array([1.0, 3.0, 1.0, 100.0])  # item 1: 0.1·3 = 0.3 > item 0: 0.2·1 = 0.2
    assert ab.retrieve_and_rerank(query, items, 3, 3, ab.ecpm_scorer(score, bid))[0].tolist() == [
        1,
        0,
        2,
    ]
    bid = np.array([1.0, 1.5, 1.0, 100.0])  # 0.1·1.5 = 0.15 < 0.2: pCTR wins
    assert ab.retrieve_and_rerank(query, items, 3, 3, ab.ecpm_scorer(score, bid))[0].tolist() == [
        0,
        1,
        2,
    ]
    # the legacy score can be negative: max(score, 0) × bid, then the rest by score
    s = np.array([[0.5, 0.2, -0.1, -0.3]])
    order = ab.legacy_ecpm_order(s, np.array([[1.0, 5.0, 100.0, 1.0]]))
    assert order[0].tolist() == [1, 0, 2, 3]


def test_oracle_has_the_highest_rpm_under_ecpm(world, traffic):
    clicks = ab.ClickModel(world, traffic)
    bid = ab.item_bids(world)
    assert bid is not None and (bid > 0).all()
    k = 5
    oracle = ab.score_policy(clicks, clicks.best(k, bid), 0)
    rng = np.random.default_rng(1)
    n = len(bid)
    others = [
        clicks.best(k),  # the CTR oracle: more clicks, less revenue
        ab.legacy_policy(world, traffic, k, bid, candidates=20),
        ab.legacy_policy(world, traffic, k),
        np.argsort(rng.random((len(traffic), n)), axis=1)[:, :k],
    ]
    for shown in others:
        f = ab.score_policy(clicks, shown, 0)
        assert (oracle.revenue >= f.revenue - 1e-12).all()
        assert oracle.rpm >= f.rpm
    assert oracle.rpm > ab.score_policy(clicks, clicks.best(k), 0).rpm
    assert ab.score_policy(clicks, clicks.best(k), 0).ctr >= oracle.ctr


def test_world_refuses_a_bad_bid_naming_file_column_and_row(tiny_world_dir, tmp_path):
    import shutil

    import pyarrow as pa

    from visctr.errors import InputError

    for bad, what in (
        (np.nan, "not a finite number > 0"),
        (0.0, "not a finite number > 0"),
        (-1.0, "not a finite number > 0"),
        (None, "not a finite number > 0"),
    ):
        root = tmp_path / f"w{what[:3]}{bad}"
        shutil.copytree(tiny_world_dir, root)
        t = pq.read_table(root / "items.parquet")
        b = t.column("bid").to_pylist()
        b[7] = bad
        t = t.set_column(t.column_names.index("bid"), "bid", pa.array(b, pa.float64()))
        pq.write_table(t, root / "items.parquet")
        with pytest.raises(InputError, match=r"items.parquet: row 7: bid .* " + what):
            World.load(root)
    t = pq.read_table(tiny_world_dir / "items.parquet")
    t = t.set_column(
        t.column_names.index("bid"), "bid", pa.array([str(x) for x in t.column("bid").to_pylist()])
    )
    root = tmp_path / "str"
    shutil.copytree(tiny_world_dir, root)
    pq.write_table(t, root / "items.parquet")
    with pytest.raises(InputError, match=r"items.parquet: column 'bid' must be numbers"):
        World.load(root)


def test_ecpm_ranking_on_a_world_without_bids_is_an_error_naming_the_file(world):
    import copy

    from visctr.errors import InputError
    from visctr.pipeline.abtest import ABTest
    from visctr.pipeline.config import ABTestConfig, RunConfig

    old = copy.copy(world)
    old.items = {k: v for k, v in world.items.items() if k != "bid"}  # a world from before bids
    cfg = RunConfig(abtest=ABTestConfig(queries=20, rank_by="ecpm"))
    with pytest.raises(InputError, match=r"items.parquet: abtest.rank_by is ecpm .* no 'bid'"):
        ABTest(old, cfg)
    with pytest.raises(ValueError, match="rank_by must be ctr or ecpm"):
        ABTestConfig(rank_by="revenue")
    plain = ABTest(old, RunConfig(abtest=ABTestConfig(queries=20)))  # ctr: no revenue, no error
    assert plain.fixed["legacy"].rpm is None
