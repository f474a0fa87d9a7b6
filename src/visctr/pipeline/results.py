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
