"""Off-policy estimators against brute force, unbiasedness on a toy world, and OBP."""

from __future__ import annotations

import numpy as np
import pytest

from visctr.eval import ope

N_ITEMS, K = 6, 2


def _toy(seed: int, n_queries: int, gamma: np.ndarray, theta: np.ndarray):
    """A uniform random bucket of K distinct items out of N_ITEMS per query, clicks from a
    position-based model P(click) = θ_k · γ[q, item]."""
    rng = np.random.default_rng(seed)
    items = np.argsort(rng.random((n_queries, N_ITEMS)), axis=1)[:, :K]
    p = theta[None, :K] * np.take_along_axis(gamma, items, 1)
    clicks = (rng.random(p.shape) < p).astype(np.float64)
    prop = np.full(items.shape, 1.0 / N_ITEMS)
    return ope.Logged(items, clicks, prop)


def _true_ctr(shown: np.ndarray, gamma: np.ndarray, theta: np.ndarray) -> float:
    return float((theta[None, :K] * np.take_along_axis(gamma, shown, 1)).mean())


def _case(seed: int, q: int, theta: np.ndarray):
    """A toy bucket, the greedy policy on the true γ, and random reward-model values."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.05, 0.9, (q, N_ITEMS))
    logged = _toy(seed + 1, q, gamma, theta)
    shown = np.argsort(-gamma, axis=1)[:, :K]
    return logged, shown, rng.uniform(0, 0.5, logged.items.shape), rng.uniform(0, 0.5, shown.shape)


def test_each_estimator_equals_a_brute_force_loop():
    q, theta = 40, np.array([1.0, 0.6])
    logged, shown, r_log, r_sh = _case(0, q, theta)
    ips = snips_n = snips_d = pi = dr = dr_pi = 0.0
    for i in range(q):
        for k in range(K):
            a, c, p = logged.items[i, k], logged.clicks[i, k], logged.propensity[i, k]
            w = float(a == shown[i, k]) / p
            ips += w * c
            snips_n += w * c
            snips_d += w
            dr += w * (c - r_log[i, k])
            u = sum(theta[j] * (a == shown[i, j]) for j in range(K)) / (theta[k] * p) / K
            pi += u * c
            dr_pi += u * (c - r_log[i, k])
        dr += r_sh[i].sum()
        dr_pi += r_sh[i].sum()
    kw = {"theta": theta, "r_logged": r_log, "r_shown": r_sh}
    got = {e: ope.estimate(e, logged, shown, **kw).ctr for e in ope.ESTIMATORS}
    assert got["ips"] == pytest.approx(ips / (q * K))
    assert got["snips"] == pytest.approx(snips_n / snips_d)
    assert got["pi"] == pytest.approx(pi / (q * K))
    assert got["dm"] == pytest.approx(r_sh.mean())
    assert got["dr"] == pytest.approx(dr / (q * K))
    assert got["dr_pi"] == pytest.approx(dr_pi / (q * K))


def test_ips_and_pi_are_unbiased_on_a_uniform_bucket():
    """Mean over many buckets of a fixed policy's estimate is the true CTR, within 3 of its
    standard errors (the spread of the estimates over the buckets)."""
    rng = np.random.default_rng(5)
    q = 400
    gamma = rng.uniform(0.05, 0.6, (q, N_ITEMS))
    theta = np.array([1.0, 0.5])
    shown = np.argsort(-gamma, axis=1)[:, :K]
    truth = _true_ctr(shown, gamma, theta)
    for name in ("ips", "pi", "dr"):
        vals = []
        for s in range(200):
            lg = _toy(100 + s, q, gamma, theta)
            vals.append(
                ope.estimate(name, lg, shown, theta, np.zeros_like(lg.clicks), np.zeros((q, K))).ctr
            )
        vals = np.asarray(vals)
        se = vals.std(ddof=1) / np.sqrt(vals.size)
        assert abs(vals.mean() - truth) < 3 * se, (name, vals.mean(), truth, se)
        assert vals.std() > 0  # the check has teeth: the estimates do vary


def test_pi_with_the_wrong_examination_is_biased():
    """The teeth of the unbiasedness test: θ flattened to 1 (no position bias) moves pi."""
    rng = np.random.default_rng(5)
    q = 400
    gamma = rng.uniform(0.05, 0.6, (q, N_ITEMS))
    theta = np.array([1.0, 0.3])
    shown = np.argsort(-gamma, axis=1)[:, :K]
    truth = _true_ctr(shown, gamma, theta)
    vals = [ope.estimate("pi", _toy(s, q, gamma, theta), shown, np.ones(2)).ctr for s in range(100)]
    se = np.std(vals, ddof=1) / 10
    assert abs(np.mean(vals) - truth) > 3 * se


def test_the_logging_policy_itself_gets_the_logged_ctr():
    """A deterministic log (propensity 1) and a policy that shows what it showed: ips and
    snips are the logged CTR exactly, and dr is whatever the reward model says plus the
    residual, i.e. the logged CTR again."""
    rng = np.random.default_rng(3)
    items = np.tile(np.arange(K), (50, 1))
    clicks = (rng.random(items.shape) < 0.3).astype(np.float64)
    lg = ope.Logged(items, clicks, np.ones(items.shape))
    r = rng.uniform(0, 1, items.shape)
    for e in ("ips", "snips", "dr"):
        assert ope.estimate(e, lg, items, None, r, r).ctr == pytest.approx(clicks.mean())


def test_examination_power_law_recovers_the_decay():
    rng = np.random.default_rng(0)
    n, k = 200_000, 10
    theta = (1 + np.arange(k)) ** -0.8
    clicks = (rng.random((n, k)) < 0.02 * theta).astype(np.float64)
    lg = ope.Logged(np.zeros((n, k), dtype=np.int64), clicks, np.ones((n, k)))
    est = ope.examination(lg, "power")
    assert est[0] == 1.0 and np.abs(est - theta).max() < 0.03
    free = ope.examination(lg, "free")
    assert np.all(np.diff(free) <= 0) and free[0] == 1.0


def test_exposure_propensity_by_hand():
    """(share of queries showing the item) x (share of impressions at the position)."""
    items = np.array([[0, 1], [0, 2], [1, -1]])
    lg = ope.Logged(items, np.zeros(items.shape), np.ones(items.shape))
    p = ope.exposure_propensity(lg)
    at = np.array([3, 2]) / 5  # impressions by position
    shown = {0: 2 / 3, 1: 2 / 3, 2: 1 / 3}  # queries showing each item
    want = [[shown[0] * at[0], shown[1] * at[1]], [shown[0] * at[0], shown[2] * at[1]]]
    assert np.allclose(p[:2], want)
    assert p[2, 0] == pytest.approx(shown[1] * at[0])


def _skewed_log(seed: int, q: int, gamma, theta, weights):
    """A random but non-uniform logger: K distinct items per query, drawn without
    replacement with probability ∝ ``weights`` (the same for every query)."""
    rng = np.random.default_rng(seed)
    keys = rng.random((q, N_ITEMS)) ** (1.0 / weights[None, :])  # Efraimidis-Spirakis
    items = np.argsort(-keys, axis=1)[:, :K]
    p = theta[None, :K] * np.take_along_axis(gamma, items, 1)
    clicks = (rng.random(p.shape) < p).astype(np.float64)
    return ope.Logged(items, clicks, np.ones(items.shape))


def test_dr_with_exposure_propensities_on_a_random_logger_and_a_deterministic_one():
    """The estimated propensities make dr unbiased where the logger shows items whatever
    the query (they are then its marginals), and biased for a ranker that always shows
    the same slate: the warning the ordinary log's estimates carry."""
    rng = np.random.default_rng(11)
    q = 400
    gamma = rng.uniform(0.05, 0.6, (q, N_ITEMS))
    theta = np.array([1.0, 0.5])
    shown = np.argsort(-gamma, axis=1)[:, :K]
    truth = _true_ctr(shown, gamma, theta)
    weights = np.array([4.0, 3.0, 2.0, 1.0, 1.0, 0.5])
    vals = []
    for s in range(200):
        lg = _skewed_log(200 + s, q, gamma, theta, weights)
        lg = ope.Logged(lg.items, lg.clicks, ope.exposure_propensity(lg))
        r = np.zeros_like(lg.clicks)
        vals.append(ope.estimate("dr", lg, shown, theta, r, np.zeros((q, K))).ctr)
    se = np.std(vals, ddof=1) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - truth) < 3 * se, (np.mean(vals), truth, se)
    # a deterministic ranker: the same two items for every query
    biased = []
    for s in range(50):
        lg = _skewed_log(300 + s, q, gamma, theta, np.array([1e6, 1e6, 1e-6, 1e-6, 1e-6, 1e-6]))
        lg = ope.Logged(lg.items, lg.clicks, ope.exposure_propensity(lg))
        r = np.zeros_like(lg.clicks)
        biased.append(ope.estimate("dr", lg, shown, theta, r, np.zeros((q, K))).ctr)
    assert abs(np.mean(biased) - truth) > 5 * np.std(biased, ddof=1) / np.sqrt(50)


def test_examination_from_calibration_is_the_position_effect_at_equal_score():
    """A ranker that puts better items on top: the raw click-rate ratio by position
    overstates the decay, the calibration's position coefficients recover it."""
    rng = np.random.default_rng(4)
    n, k = 60_000, 5
    theta = np.array([1.0, 0.7, 0.5, 0.4, 0.3])
    score = np.sort(rng.normal(-3.0, 1.0, (n, k)), axis=1)[:, ::-1]  # best on top
    p = theta[None, :] / (1 + np.exp(-score))
    clicks = (rng.random(p.shape) < p).astype(np.float64)
    pos = np.broadcast_to(np.arange(k), (n, k))
    beta = ope.fit_calibration(score.ravel(), pos.ravel(), clicks.ravel(), k)
    est = ope.examination_from_calibration(beta)
    assert est[0] == 1.0 and np.abs(est - theta).max() < 0.06, est
    ratio = clicks.mean(0) / clicks.mean(0)[0]
    assert np.abs(ratio - theta).max() > 0.1  # what the raw ratio would have said


def test_from_rows_builds_slates_and_refuses_bad_logs():
    lg = ope.Logged.from_rows([0, 0, 1], [0, 1, 0], [4, 2, 3], [1, 0, 0], 0.5, 2)
    assert lg.items.tolist() == [[4, 2], [3, -1]]
    assert lg.mask.sum() == 3
    from visctr.errors import InputError

    with pytest.raises(InputError, match="two impressions at one position"):
        ope.Logged.from_rows([0, 0], [1, 1], [4, 2], [1, 0], 0.5, 1, where="x.parquet")
    with pytest.raises(InputError, match="propensities"):
        ope.Logged.from_rows([0], [0], [4], [1], 0.0, 1)
    with pytest.raises(InputError, match="clicks must be 0 or 1"):
        ope.Logged.from_rows([0], [0], [4], [np.nan], 0.5, 1)
    with pytest.raises(InputError, match="no impressions"):
        ope.Logged.from_rows([], [], [], [], 0.5, 1)


def test_bootstrap_is_paired_and_covers():
    rng = np.random.default_rng(1)
    num = rng.random((2, 500))
    den = np.ones((2, 500))
    draws = ope.bootstrap_ratios(np.stack([num[0], num[0] * 1.1]), den, 300, seed=0)
    # the same resamples: the ratio of a column to a 10% larger copy is exactly 1.1
    assert np.allclose(draws[:, 1] / draws[:, 0], 1.1)
    lo, hi = ope.interval(draws[:, 0])
    assert lo < num[0].mean() < hi and hi - lo < 0.1


def test_spearman_and_validation_by_hand():
    assert ope.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ope.spearman([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert ope.rankdata(np.array([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]
    est = {"ips": {"a": [0.1, 0.2], "b": [0.3, 0.5]}}
    cis = {"ips": {"a": [(0.0, 0.2), (0.0, 0.1)], "b": [(0.2, 0.4), (0.4, 0.6)]}}
    truth = {"a": [0.15, 0.15], "b": [0.35, 0.45]}
    v = ope.validate(est, cis, truth)["ips"]
    assert v["bias"] == pytest.approx(np.mean([-0.05, 0.05, -0.05, 0.05]))
    assert v["rmse"] == pytest.approx(0.05)
    assert v["coverage"] == pytest.approx(0.75)  # a's second CI misses 0.15
    assert v["n"] == 4


def test_calibration_fits_a_known_logistic():
    rng = np.random.default_rng(2)
    s = rng.normal(size=50_000)
    pos = rng.integers(0, 3, size=s.size)
    z = 1.5 * s - 2.0 + np.array([0.0, -0.5, -1.0])[pos]
    y = (rng.random(s.size) < 1 / (1 + np.exp(-z))).astype(np.float64)
    beta = ope.fit_calibration(s, pos, y, 3)
    assert beta == pytest.approx([1.5, -0.5, -1.0, -2.0], abs=0.1)
    p = ope.calibrated(beta, np.array([0.0]), np.array([0]))
    assert p[0] == pytest.approx(1 / (1 + np.exp(2.0)), abs=0.02)


def test_matches_open_bandit_pipeline():
    """visctr's ips, snips and dr equal OBP's IPW, SNIPW and DR on the same arrays."""
    obp_ope = pytest.importorskip("obp.ope", reason="obp (the interop extra) is not installed")
    q, theta = 300, np.array([1.0, 0.5])
    lg, shown, r_log, r_sh = _case(7, q, theta)
    # OBP's slate-free form: one round per logged slot, the slot's position as `position`,
    # the target policy as a [rounds, actions, positions] distribution
    rounds = q * K
    action = lg.items.ravel()
    position = np.tile(np.arange(K), q)
    reward = lg.clicks.ravel()
    pscore = lg.propensity.ravel()
    rr = np.arange(rounds)
    qi = np.repeat(np.arange(q), K)  # the query of each round
    # the reward model must be one function of (query, item, position): where the logged
    # item is the policy's at that position, both predictions are the same number
    r_log = np.where(lg.items == shown, r_sh, r_log)
    dist = np.zeros((rounds, N_ITEMS, K))
    reg = np.zeros((rounds, N_ITEMS, K))
    for k in range(K):
        dist[rr, shown[qi, k], k] = 1.0
        reg[rr, shown[qi, k], k] = r_sh[qi, k]
    reg[rr, action, position] = r_log.ravel()
    common = {"reward": reward, "action": action, "position": position, "pscore": pscore}
    want = {
        "ips": obp_ope.InverseProbabilityWeighting().estimate_policy_value(
            action_dist=dist, **common
        ),
        "snips": obp_ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(
            action_dist=dist, **common
        ),
        "dr": obp_ope.DoublyRobust().estimate_policy_value(
            action_dist=dist, estimated_rewards_by_reg_model=reg, **common
        ),
    }
    for e, v in want.items():
        got = ope.estimate(e, lg, shown, theta, r_log, r_sh).ctr
        # OBP's value is per round; visctr's CTR is per shown slot: the same average here
        assert abs(got - v) <= 1e-9, (e, got, v)
