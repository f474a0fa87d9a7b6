"""The shape of ``results.json``: metric names, per-seed aggregation, the comparison table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

METRICS = (
    "hr@1",
    "hr@10",
    "hr@50",
    "longtail_hr@10",
    "head_hr@10",
    "category_recall@10",
    "auc",
    "logloss",
    "gauc",
    "auc_random_exposure",
    "auc_tail",
)
BY_CATEGORY = (
    "auc_random_same_category",
    "auc_random_other_category",
    "random_same_category_share",
    "random_same_category_click_share",
)
TABLE_METRICS = (
    "hr@10",
    "longtail_hr@10",
    "head_hr@10",
    "category_recall@10",
    "auc",
    "auc_random_exposure",
    "auc_tail",
    "gauc",
    "logloss",
)


def aggregate(values: list[float]) -> dict[str, Any]:
    """``{mean, std, per_seed}`` over the finite values (std with ddof=1; 0 for one seed)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return {
        "mean": float(finite.mean()) if len(finite) else None,
        "std": float(finite.std(ddof=1)) if len(finite) > 1 else (0.0 if len(finite) else None),
        "per_seed": [None if not math.isfinite(v) else float(v) for v in arr],
    }


def _has_spread(entry: dict) -> bool:
    """Whether ``entry`` aggregates more than one seed (a 1-seed std is no spread)."""
    seeds = entry.get("per_seed")
    n = 2 if seeds is None else sum(v is not None for v in seeds)
    return n > 1 and entry.get("std") is not None


def fmt(entry: dict, digits: int = 3) -> str:
    """``mean ± std``, or the mean alone for one seed; ``n/a`` without a value."""
    if entry["mean"] is None:
        return "n/a"
    if not _has_spread(entry):
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def fmt_pct(entry: dict) -> str:
    """A lift as ``+x.x% ± y.y%`` (the mean alone for one seed); ``—`` without a value."""
    if entry.get("mean") is None:
        return "—"
    if not _has_spread(entry):
        return f"{entry['mean']:+.1%}"
    return f"{entry['mean']:+.1%} ± {entry['std']:.1%}"


def format_table(results: dict, markdown: bool = False) -> str:
    """The methods × ``TABLE_METRICS`` table, in the order of ``results['methods']``."""
    head = ["method", *TABLE_METRICS]
    rows = [[m, *(fmt(r[k]) for k in TABLE_METRICS)] for m, r in results["methods"].items()]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
    )


# Paired comparisons: S3 against each control, on the metrics a debiasing claim rests on
COMPARISON_PAIRS = (
    ("S1+S2+D", "S1+S2"),
    ("S1+S2+D", "S1+S2+H"),
    ("S1+S2+D", "S1+S2+IPS"),
    ("S1+S2+D", "S2"),
)
# (name in results.json["comparisons"], where its per-replicate values are)
COMPARISON_METRICS = (
    ("auc_random_exposure", "methods"),
    ("auc_random_same_category", "random_exposure_by_category"),
    ("auc_tail", "methods"),
    ("hr@10", "methods"),
    ("longtail_hr@10", "methods"),
    ("ab_ctr", "ab_test"),
    ("ab_rpm", "ab_test"),
    ("ab_tail_exposure_share", "ab_test"),
)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``p > 0.5``): the
    CDF by Simpson's rule on the density, inverted by bisection (to ~1e-9)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # P(T <= x) for x >= 0; the tail beyond x is tiny for large x
        n = 2000
        t = np.linspace(0.0, x, 2 * n + 1)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))
        h = x / (2 * n)
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


INTERVAL = "t over encoder-seed means"  # what a comparison's ci95 is (results.json)


def t_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """``mean ± t_{n−1} · sd / √n`` over ``values``; ``None`` for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    mean = float(np.mean(values))
    half = t_quantile(0.5 + level / 2, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return [mean - half, mean + half]


def group_means(values: list[float], groups: list) -> tuple[list[float], list]:
    """The mean of ``values`` per group, groups in order of first appearance:
    ``(means, groups)``. Averages the CTR seeds of each encoder seed."""
    keys = list(dict.fromkeys(groups))
    by = {k: [] for k in keys}
    for v, g in zip(values, groups, strict=True):
        by[g].append(v)
    return [float(np.mean(by[k])) for k in keys], keys


def paired_ci(
    a: list[float], b: list[float], level: float = 0.95, groups: list | None = None
) -> dict[str, Any]:
    """The paired difference ``a − b`` over replicates: ``{mean_diff, ci95, per_seed, n,
    n_replicates, per_encoder_seed, interval}``. Pairs with a missing side are left out.

    ``groups``: each replicate's encoder seed. The CTR seeds of one encoder seed share its
    encoder, so they are averaged first and the t interval (``mean ± t_{n−1} · sd / √n``)
    runs over the encoder-seed means; ``n`` is the number of encoder seeds (without
    ``groups``, every replicate is its own). ``per_seed`` keeps the per-replicate
    differences. Fewer than two encoder seeds give no interval."""
    interval = INTERVAL if groups is not None else "t over replicates"
    groups = list(range(len(a))) if groups is None else list(groups)
    kept = [
        (x - y, g)
        for x, y, g in zip(a, b, groups, strict=True)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    diffs = [d for d, _ in kept]
    means, _ = group_means(diffs, [g for _, g in kept])
    n = len(means)
    return {
        "mean_diff": float(np.mean(means)) if n else None,
        "ci95": t_interval(means, level),
        "per_seed": [float(d) for d in diffs],
        "n": n,
        "n_replicates": len(diffs),
        "per_encoder_seed": means,
        "interval": interval,
    }


def comparisons(results: dict, pairs=COMPARISON_PAIRS, metrics=COMPARISON_METRICS) -> list[dict]:
    """``results.json["comparisons"]``: for each pair and metric, the paired difference
    from the per-replicate values that ``results`` holds, with a t interval over encoder
    seeds (``results["replicates"]`` says each replicate's encoder seed; the CTR seeds of
    one encoder seed are averaged first); a pair or metric the run lacks is left out."""
    reps = results.get("replicates")
    out = []
    for metric, where in metrics:
        for a, b in pairs:
            va, vb = (
                _per_replicate(results, where, metric, a),
                _per_replicate(results, where, metric, b),
            )
            if va is None or vb is None:
                continue
            groups = [r[0] for r in reps] if reps and len(reps) == len(va) else None
            out.append({"a": a, "b": b, "metric": metric, **paired_ci(va, vb, groups=groups)})
    return out


def _per_replicate(results: dict, where: str, metric: str, method: str) -> list | None:
    if where == "ab_test":
        table = results.get("ab_test", {}).get("methods", {})
        metric = metric.removeprefix("ab_")
    else:
        table = results.get(where) or {}
    entry = table.get(method, {}).get(metric)
    return None if entry is None else entry["per_seed"]


def format_comparisons(rows: list[dict]) -> str:
    """The comparisons as a Markdown table (difference and its paired 95% CI)."""
    lines = ["| a − b | metric | mean diff | 95% CI | n |", "|---|---|---|---|---|"]
    for r in rows:
        ci = "—" if r["ci95"] is None else f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]"
        md = "n/a" if r["mean_diff"] is None else f"{r['mean_diff']:+.4f}"
        lines.append(f"| {r['a']} − {r['b']} | {r['metric']} | {md} | {ci} | {r['n']} |")
    return "\n".join(lines)
