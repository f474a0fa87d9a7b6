"""Off-policy estimates (OPE) of a slate policy's CTR from logged impressions.

The question a shop asks before an A/B slot: *what CTR would this policy get?* Each
estimator answers it from impressions a *logging* policy showed, one slate per query,
with the click of every slot:

- ``ips``: per-slot inverse propensity (replay): a logged slot counts when the policy
  would show the same item at the same position, weighted by 1/P(logging showed it
  there). Unbiased when a click depends on the item and its position only.
- ``snips``: the same, self-normalised by the sum of the weights (biased, lower variance).
- ``pi``: the pseudo-inverse estimator (Swaminathan et al. 2017) in the features of a
  position-based click model, P(click) = θ(position) · γ(query, item), with θ estimated
  from the log. With per-slot clicks it reduces to a per-slot weight
  ``Σ_j θ_j 1[π_j = a_k] / (θ_k p_k)``: an item counts wherever the policy shows it, so
  about K times more logged slots count than for ``ips``. Unbiased under that model.
- ``dm``: a reward model's predicted clicks of the policy's slate (no weights; biased as
  far as the model is).
- ``dr``: doubly robust, ``dm`` plus the ``ips``-weighted residual clicks of the log.
- ``dr_pi``: doubly robust with the ``pi`` weights (unbiased under the position-based
  model, with ``pi``'s K-fold more matching slots).

Every estimate is a ratio ``Σ_q num_q / Σ_q den_q`` over queries, so one bootstrap over
queries (the same resamples for every policy) gives each estimate's CI and paired CIs
of their ratios (lifts). θ is held fixed inside the bootstrap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from visctr.errors import InputError

ESTIMATORS = ("ips", "snips", "pi", "dm", "dr", "dr_pi")
BOOT_STREAM = 0x0BE5  # the bootstrap's own random stream


@dataclass
class Logged:
    """Logged slates, one row a query: ``items`` item rows (``-1`` = no item in that slot),
    ``clicks`` 0/1, ``propensity`` P(the logging policy shows that item in that slot | query)."""

    items: np.ndarray  # int64 [Q, L]
    clicks: np.ndarray  # float64 [Q, L]
    propensity: np.ndarray  # float64 [Q, L]

    @property
    def mask(self) -> np.ndarray:
        return self.items >= 0

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def from_rows(
        cls,
        query_rows: np.ndarray,
        positions: np.ndarray,
        items: np.ndarray,
        clicks: np.ndarray,
        propensity: np.ndarray | float,
        n_queries: int,
        where: str = "log",
    ) -> Logged:
        """Dense slates from impression rows (``query_rows`` in ``0..n_queries-1``)."""
        q = np.asarray(query_rows, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        if q.size == 0:
            raise InputError(f"{where}: no impressions to estimate from")
        if pos.min() < 0:
            raise InputError(f"{where}: negative position {int(pos.min())}")
        p = np.broadcast_to(np.asarray(propensity, dtype=np.float64), q.shape)
        if not (np.isfinite(p).all() and (p > 0).all() and (p <= 1).all()):
            raise InputError(f"{where}: propensities must be in (0, 1]")
        c = np.asarray(clicks, dtype=np.float64)
        if not np.isin(c, (0.0, 1.0)).all():
            raise InputError(f"{where}: clicks must be 0 or 1")
        n_pos = int(pos.max()) + 1
        flat = q * n_pos + pos
        if np.unique(flat).size != flat.size:
            raise InputError(f"{where}: a query has two impressions at one position")
        out_items = np.full((n_queries, n_pos), -1, dtype=np.int64)
        out_clicks = np.zeros((n_queries, n_pos))
        out_p = np.ones((n_queries, n_pos))
        out_items.flat[flat] = items
        out_clicks.flat[flat] = c
        out_p.flat[flat] = p
        return cls(out_items, out_clicks, out_p)


@dataclass
class Estimate:
    """One policy's estimate as per-query ``num``/``den`` (CTR = Σnum / Σden) and the
    per-slot weights that made it (for the effective sample size)."""

    num: np.ndarray  # float64 [Q]
    den: np.ndarray  # float64 [Q]
    weights: np.ndarray | None  # float64 [Q, L] (None: no weights, e.g. dm)

    @property
    def ctr(self) -> float:
        d = self.den.sum()
        return float(self.num.sum() / d) if d > 0 else float("nan")

    @property
    def ess(self) -> float:
        """Kish's effective sample size of the weights, in logged slots (queries for dm)."""
        if self.weights is None:
            return float(self.num.size)
        w = self.weights.ravel()
        s2 = float((w * w).sum())
        return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


def examination(logged: Logged, model: str = "power") -> np.ndarray:
    """θ by position relative to the top slot, from a log whose items do not depend on the
    position (a random-exposure bucket).

    ``power``: θ_k = (1 + k)^-η, η by Poisson maximum likelihood on the clicks per position
    (the examination model of Joachims et al. 2017; two parameters, so a few hundred
    clicks fix it). ``free``: the click-rate ratio of each position, made non-increasing
    (noisy with few clicks, and 1/θ magnifies the noise into a bias)."""
    m = logged.mask
    imp = m.sum(0).astype(np.float64)
    clk = (logged.clicks * m).sum(0)
    if model == "free":
        from visctr.ctr.ips import examination as ratio

        return ratio(imp, clk)
    if model != "power":
        raise ValueError(f"examination model must be power or free, got {model!r}")
    if clk.sum() == 0:
        raise InputError("the log has no click: the examination by position cannot be estimated")
    x = np.log1p(np.arange(imp.size))
    a, eta = np.log(clk.sum() / imp.sum()), 0.0
    for _ in range(100):  # Newton on the Poisson log-likelihood of (a, η)
        mu = imp * np.exp(a - eta * x)
        g = np.array([(clk - mu).sum(), -((clk - mu) * x).sum()])
        h = np.array([[mu.sum(), -(mu * x).sum()], [-(mu * x).sum(), (mu * x * x).sum()]])
        step = np.linalg.lstsq(h, g, rcond=None)[0]
        a, eta = a + step[0], float(np.clip(eta + step[1], 0.0, 10.0))
        if np.abs(step).max() < 1e-10:
            break
    return (1.0 + np.arange(imp.size)) ** -eta


def exposure_propensity(logged: Logged) -> np.ndarray:
    """P(the logging policy shows item a in slot k) ``[Q, L]`` of every logged slot, by the
    position × exposure factorisation ``S1+S2+IPS`` uses for its weights, for an ordinary
    log that records no propensity: (share of queries whose slate shows a) × (share of
    impressions at position k). It is the logging policy's true marginal only when what it
    shows does not depend on the query; a deterministic ranker's true propensities are 0
    or 1, so estimates weighted by these are biased (``ope_validation`` measures how far)."""
    m = logged.mask
    q = max(len(logged), 1)
    rows = logged.items[m]
    n_items = int(rows.max()) + 1 if rows.size else 1
    in_slates = np.bincount(rows, minlength=n_items) / q  # an item is shown once per slate
    at_position = m.sum(0) / max(int(m.sum()), 1)
    p = np.ones_like(logged.clicks)
    p[m] = (in_slates[logged.items] * at_position[None, :])[m]
    return np.minimum(p, 1.0)


def examination_from_calibration(beta: np.ndarray) -> np.ndarray:
    """θ by position relative to the top slot from a :func:`fit_calibration`: the odds ratio
    of each position's coefficient (the position effect at equal reward-model score, so
    the better items a ranker puts on top do not count as examination), made
    non-increasing and kept in [1e-3, 1]."""
    b = np.asarray(beta, dtype=np.float64)
    theta = np.exp(np.concatenate([[0.0], b[1:-1]]))
    return np.clip(np.minimum.accumulate(np.minimum(theta, 1.0)), 1e-3, 1.0)


def positions_theta(theta: np.ndarray, n: int) -> np.ndarray:
    """θ over ``n`` positions: positions beyond the estimate take its last value."""
    t = np.asarray(theta, dtype=np.float64)
    if t.size >= n:
        return t[:n]
    return np.concatenate([t, np.full(n - t.size, t[-1])])


def estimate(
    name: str,
    logged: Logged,
    shown: np.ndarray,
    theta: np.ndarray | None = None,
    r_logged: np.ndarray | None = None,
    r_shown: np.ndarray | None = None,
) -> Estimate:
    """Estimator ``name`` of ``ESTIMATORS`` for a policy that shows ``shown`` (item rows
    ``[Q, K]``, position = column) to the logged queries, in the same row order.

    ``theta``: examination by position (``pi``); ``r_logged`` / ``r_shown``: a reward
    model's P(click) of the logged slots ``[Q, L]`` and of the policy's ``[Q, K]``
    (``dm``, ``dr``)."""
    shown = np.asarray(shown, dtype=np.int64)
    if shown.ndim != 2 or shown.shape[0] != len(logged):
        raise ValueError(f"shown must be [{len(logged)}, K], got {shown.shape}")
    q, k = shown.shape
    den = np.full(q, float(k))
    mask = logged.mask
    l_pos = logged.items.shape[1]
    if name in ("ips", "snips", "dr"):
        n = min(k, l_pos)
        hit = (logged.items[:, :n] == shown[:, :n]) & mask[:, :n]
        w = np.zeros_like(logged.clicks)
        w[:, :n] = hit / logged.propensity[:, :n]
        if name == "dr":
            if r_logged is None or r_shown is None:
                raise ValueError("dr needs r_logged and r_shown")
            resid = (w * (logged.clicks - np.where(mask, r_logged, 0.0))).sum(1)
            return Estimate(np.asarray(r_shown, np.float64).sum(1) + resid, den, w)
        num = (w * logged.clicks).sum(1)
        if name == "snips":
            den = w.sum(1)
        return Estimate(num, den, w)
    if name == "pi":
        if theta is None:
            raise ValueError("pi needs theta")
        t = positions_theta(theta, max(k, l_pos))
        # [Q, L, K]: logged slot l holds the item the policy shows at position j
        hit = (logged.items[:, :, None] == shown[:, None, :]) & mask[:, :, None]
        u = (hit * t[None, None, :k]).sum(2) / (t[None, :l_pos] * logged.propensity)
        slots = np.maximum(mask.sum(1, keepdims=True), 1)
        w = u / slots  # each logged slot is one unbiased estimate of the slate's clicks
        return Estimate((w * logged.clicks).sum(1), den, w)
    if name == "dr_pi":
        if r_logged is None or r_shown is None:
            raise ValueError("dr_pi needs r_logged and r_shown")
        w = estimate("pi", logged, shown, theta).weights
        resid = (w * (logged.clicks - np.where(mask, r_logged, 0.0))).sum(1)
        return Estimate(np.asarray(r_shown, np.float64).sum(1) + resid, den, w)
    if name == "dm":
        if r_shown is None:
            raise ValueError("dm needs r_shown")
        return Estimate(np.asarray(r_shown, np.float64).sum(1), den, None)
    raise ValueError(f"unknown estimator {name!r} ({', '.join(ESTIMATORS)})")


def bootstrap_ratios(
    nums: np.ndarray, dens: np.ndarray, n_boot: int, seed: int, chunk: int = 100
) -> np.ndarray:
    """``[n_boot, P]`` bootstrap draws of ``Σ num_p / Σ den_p`` for ``P`` estimates over the
    same ``Q`` queries (``nums``, ``dens``: ``[P, Q]``), every estimate on the same
    resamples of queries, so that ratios of two columns are paired."""
    nums, dens = np.atleast_2d(nums), np.atleast_2d(dens)
    n = nums.shape[1]
    rng = np.random.default_rng([int(seed), BOOT_STREAM])
    out = np.empty((n_boot, nums.shape[0]))
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)  # [b, Q]
        d = w @ dens.T
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + b] = np.where(d > 0, (w @ nums.T) / np.where(d > 0, d, 1), np.nan)
    return out


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws (NaN draws dropped)."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(d, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def fit_calibration(
    score: np.ndarray, positions: np.ndarray, clicks: np.ndarray, n_positions: int, iters: int = 50
) -> np.ndarray:
    """Logistic regression of clicks on ``[score, one-hot position (top slot = base), 1]``
    by Newton steps (a ridge of 1e-4 keeps it finite on a log with no clicks at some
    position); returns its coefficients for :func:`calibrated`."""
    x = _design(score, positions, n_positions)
    y = np.asarray(clicks, dtype=np.float64)
    beta = np.zeros(x.shape[1])
    ridge = 1e-4 * np.eye(x.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -30, 30)))
        g = x.T @ (p - y) + ridge @ beta
        h = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(h, g)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def calibrated(beta: np.ndarray, score: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """P(click) of the calibration ``beta`` at ``score`` and ``positions`` (same shapes)."""
    n_positions = beta.size - 1
    s = np.asarray(score, dtype=np.float64)
    x = _design(s.ravel(), np.asarray(positions).ravel(), n_positions)
    return (1 / (1 + np.exp(-np.clip(x @ beta, -30, 30)))).reshape(s.shape)


def _design(score: np.ndarray, positions: np.ndarray, n_positions: int) -> np.ndarray:
    pos = np.minimum(np.asarray(positions, dtype=np.int64), n_positions - 1)
    x = np.zeros((pos.size, n_positions + 1))
    x[:, 0] = score
    x[np.arange(pos.size), pos] += pos > 0  # columns 1..P-1: positions 1..P-1
    x[:, n_positions] = 1.0
    return x


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    values, counts = np.unique(x, return_counts=True)
    for v in values[counts > 1]:
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def validate(
    estimates: Mapping[str, Mapping[str, list[float]]],
    intervals: Mapping[str, Mapping[str, list[tuple[float, float]]]],
    truth: Mapping[str, list[float]],
) -> dict[str, dict[str, float]]:
    """Per estimator, over every (policy, seed) that has a true value: ``bias`` (mean of
    estimate − truth), ``rmse``, ``coverage`` (share of 95% CIs holding the truth),
    ``spearman`` (of estimates and truths over all points), ``spearman_per_seed`` (mean
    over seeds of the rank correlation across policies) and ``n``."""
    out: dict[str, dict[str, float]] = {}
    for est, by_policy in estimates.items():
        e, t, cover, seeds = [], [], [], []
        for policy, values in by_policy.items():
            if policy not in truth:
                continue
            for s, (v, tv) in enumerate(zip(values, truth[policy], strict=True)):
                if v is None or tv is None or not np.isfinite(v):
                    continue
                lo, hi = intervals[est][policy][s]
                e.append(v)
                t.append(tv)
                cover.append(bool(lo <= tv <= hi))
                seeds.append(s)
        if not e:
            continue
        ea, ta, sa = np.asarray(e), np.asarray(t), np.asarray(seeds)
        per_seed = [spearman(ea[sa == s], ta[sa == s]) for s in np.unique(sa)]
        per_seed = [v for v in per_seed if np.isfinite(v)]
        out[est] = {
            "bias": float((ea - ta).mean()),
            "relative_bias": float(((ea - ta) / np.where(ta != 0, ta, np.nan)).mean()),
            "rmse": float(np.sqrt(((ea - ta) ** 2).mean())),
            "coverage": float(np.mean(cover)),
            "spearman": spearman(ea, ta),
            "spearman_per_seed": float(np.mean(per_seed)) if per_seed else float("nan"),
            "n": len(e),
        }
    return out
