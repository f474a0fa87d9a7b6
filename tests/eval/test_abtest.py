"""The simulated A/B test against brute-force computations on the tiny world."""

from __future__ import annotations

import numpy as np
import pytest

from visctr.eval import abtest as ab


def _click_prob_reference(world, traffic, q, item, pos) -> float:
    """The click model written out for one (query, item, position)."""
    cfg = ab.world_config(world).clicks
    rows = np.asarray(world.items["image_row"])
    img = np.asarray(world.item_images[rows], dtype=np.float64).reshape(len(rows), -1)
    img = img - img.mean(1, keepdims=True)
    img /= np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)
    t = traffic.targets[q]
    cats = np.asarray(world.items["category"])
    if item == t:
        rel = cfg.exact_relevance
    elif cats[item] == cats[t]:
        rel = cfg.category_relevance * (0.25 + 0.75 * np.clip(img[item] @ img[t], 0, 1))
    else:
        rel = cfg.other_relevance
    aff = world.users_affinity[traffic.users[q], cats[item]] * world.n_categories
    mod = np.clip(aff, 0.2, 3.0) ** cfg.affinity_strength
    strength = world.meta["config"]["appeal_strength"]
    appeal = np.exp(strength * world.items["appeal"])
    mult = appeal[item] / appeal.mean()
    return float(min(1.0, rel * mult * mod / (1 + pos) ** cfg.position_decay))


def test_traffic_is_fresh_later_and_reproducible(world, traffic):
    again = ab.simulate_traffic(world, 60, seed=0)
    assert np.array_equal(traffic.images, again.images)
    assert np.array_equal(traffic.targets, again.targets)
    assert not np.array_equal(ab.simulate_traffic(world, 60, seed=1).targets, traffic.targets)
    assert traffic.timestamps.min() > world.queries["timestamp"].max()
    assert traffic.images.shape == (60, *world.item_images.shape[1:])
    assert traffic.users.max() < world.users_affinity.shape[0]


@pytest.mark.parametrize("strength", [0.0, 1.5])
def test_target_first_policy_has_the_click_models_ctr(world, traffic, strength):
    import copy

    world = copy.copy(world)
    world.meta = {**world.meta, "config": {**world.meta["config"], "appeal_strength": strength}}
    clicks = ab.ClickModel(world, traffic)
    rng = np.random.default_rng(0)
    n = len(world.items["item_id"])
    shown = rng.integers(0, n, size=(len(traffic), 5))
    shown[:, 0] = traffic.targets
    got = clicks.probability(shown)
    for q in range(0, len(traffic), 7):
        for k in range(5):
            assert got[q, k] == pytest.approx(
                _click_prob_reference(world, traffic, q, shown[q, k], k), rel=1e-5
            )
    f = ab.score_policy(clicks, shown, seed=0)
    assert f.ctr == pytest.approx(got.sum() / got.size)


def test_oracle_beats_every_policy(world, traffic):
    clicks = ab.ClickModel(world, traffic)
    k = 5
    oracle = ab.score_policy(clicks, clicks.best(k), 0)
    rng = np.random.default_rng(1)
    n = len(world.items["item_id"])
    distinct = np.argsort(rng.random((len(traffic), n)), axis=1)  # a policy shows an item once
    target_first = np.concatenate([traffic.targets[:, None], distinct], 1)
    target_first = np.stack(
        [r[np.sort(np.unique(r, return_index=True)[1])][:k] for r in target_first]
    )
    for shown in (ab.legacy_policy(world, traffic, k), target_first, distinct[:, :k]):
        f = ab.score_policy(clicks, shown, 0)
        assert (oracle.expected >= f.expected - 1e-12).all()
    # the oracle's top slot is the best single item by brute force, for a few queries
    for q in (0, 13, 42):
        best = max(range(n), key=lambda i: _click_prob_reference(world, traffic, q, i, 0))
        p_best = _click_prob_reference(world, traffic, q, best, 0)
        assert _click_prob_reference(world, traffic, q, clicks.best(k)[q, 0], 0) == pytest.approx(
            p_best
        )


def test_rerank_keeps_retrieved_candidates_in_score_order():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8)).astype(np.float32)
    queries = items[:6] + 0.01
    plain = ab.retrieve_and_rerank(queries, items, 10, 3, None)
    assert (plain[:, 0] == np.arange(6)).all()
    reverse = ab.retrieve_and_rerank(queries, items, 10, 3, lambda c: -c.astype(float))
    cand = ab.retrieve_and_rerank(queries, items, 10, 10, None)
    assert (reverse == np.sort(cand, axis=1)[:, :3]).all()


def test_lift_gini_and_exposure_against_brute_force():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.1, 1.0, 400)
    lift = ab.paired_lift(1.1 * b, b, seed=0)
    assert lift["lift"] == pytest.approx(0.1)
    assert lift["ci_low"] == pytest.approx(0.1) and lift["ci_high"] == pytest.approx(0.1)
    noisy = ab.paired_lift(b + rng.normal(0, 0.3, 400), b, seed=0)
    assert noisy["ci_low"] < noisy["lift"] < noisy["ci_high"]
    counts = rng.integers(0, 20, 30)
    ref = np.abs(counts[:, None] - counts[None, :]).sum() / (2 * len(counts) ** 2 * counts.mean())
    assert ab.gini(counts) == pytest.approx(ref)
    assert ab.gini(np.ones(10)) == 0.0
    shown = np.array([[0, 1], [0, 2]])
    is_head = np.array([True, False, False, False])
    e = ab.exposure(shown, is_head)
    assert e == {
        "tail_exposure_share": 0.5,
        "coverage": 0.75,
        "gini": pytest.approx(ab.gini([2, 1, 1, 0])),
    }


def test_traffic_photos_are_taken_on_demand_as_in_one_pass(world):
    """``TrafficPhotos`` keeps camera states, not photos: any slice or index array gives
    the photos one pass over every target would (the traffic's size costs no memory for
    its photos)."""
    from visctr.world.simulate import _photograph_all

    cfg = ab.world_config(world)
    cfg.chunk_size = 16  # several chunks, unaligned reads across their edges
    rows = np.asarray(world.items["image_row"])
    targets = np.random.default_rng(0).integers(0, len(rows), 100)
    want = _photograph_all(np.asarray(world.item_images), rows[targets], cfg, 7, "x")
    photos = ab.TrafficPhotos(world.item_images, rows[targets], cfg, 7)
    assert len(photos) == 100 and photos.shape == want.shape and len(photos.states) == 7
    np.testing.assert_array_equal(photos[:], want)
    np.testing.assert_array_equal(photos[10:37], want[10:37])
    np.testing.assert_array_equal(photos[95:200], want[95:])
    np.testing.assert_array_equal(photos[::9], want[::9])
    pick = np.array([99, 3, 50, 3, 17])
    np.testing.assert_array_equal(photos[pick], want[pick])
    np.testing.assert_array_equal(np.asarray(photos), want)
    assert photos._cache[1].shape[0] <= 16  # one chunk held, never the traffic
    with pytest.raises(IndexError):
        photos[np.array([100])]
