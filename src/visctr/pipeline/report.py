"""``report.md`` and its plots: the comparison table, the world's bias, retrieval examples,
head vs tail recall, logged vs random-exposure AUC, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visctr.io import atomic_path, write_text
from visctr.pipeline.layout import RunLayout
from visctr.pipeline.results import fmt, fmt_pct, format_table
from visctr.world.simulate import format_summary


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)


def _bars(results: dict, metrics: list[tuple[str, str]], title: str, path: Path) -> None:
    methods = list(results["methods"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(methods))
    w = 0.8 / len(metrics)
    for j, (key, label) in enumerate(metrics):
        mean = [results["methods"][m][key]["mean"] or 0.0 for m in methods]
        std = [results["methods"][m][key]["std"] or 0.0 for m in methods]
        ax.bar(x + (j - (len(metrics) - 1) / 2) * w, mean, w, yerr=std, capsize=3, label=label)
    ax.set_xticks(x, methods)
    ax.set_title(f"{title} (mean ± std over {results['seeds']} seed(s))")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _examples(world, tops: dict[str, np.ndarray], n_queries: int, path: Path) -> None:
    """Query photos and each method's top-5 (``tops``: method -> ranked item rows)."""
    from visctr.eval.retrieval import retrieval_targets
    from visctr.ids import IdIndex

    plt = _plt()
    qids, tids = retrieval_targets(world)  # the pairs ``tops`` is ranked for, in order
    rows = IdIndex(world.queries["query_id"]).rows(qids[:n_queries], strict=True)
    targets = IdIndex(world.items["item_id"]).rows(
        tids[:n_queries], strict=True, what="target_item_id", path=world.root / "queries.parquet"
    )
    methods = list(tops)
    k = 5
    fig, axes = plt.subplots(
        len(rows) * len(methods), k + 1, figsize=(1.1 * (k + 1), 1.15 * len(rows) * len(methods))
    )
    axes = np.atleast_2d(axes)
    for qi, qrow in enumerate(rows):
        target = targets[qi]
        qimg = world.query_images[world.queries["image_row"][qrow]]
        for mi, m in enumerate(methods):
            r = qi * len(methods) + mi
            ax = axes[r, 0]
            ax.imshow(_hwc(qimg), cmap="gray")
            ax.set_ylabel(m, fontsize=7, rotation=0, ha="right", va="center")
            if mi == 0:
                ax.set_title(f"query {qi + 1}", fontsize=7)
            for j in range(k):
                item_row = tops[m][qi, j]
                ax = axes[r, j + 1]
                ax.imshow(_hwc(world.item_images[world.items["image_row"][item_row]]), cmap="gray")
                if item_row == target:
                    for s in ax.spines.values():
                        s.set_edgecolor("lime")
                        s.set_linewidth(3)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(top=1 - 0.35 / fig.get_figheight(), hspace=0.08, wspace=0.05)
    fig.suptitle(
        "Retrieval examples: query photo, then top-5 items (green = the target)",
        fontsize=8,
        y=1 - 0.1 / fig.get_figheight(),
    )
    _save(fig, path)


def _hwc(img: np.ndarray) -> np.ndarray:
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _curves(curves: dict[str, dict], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for method, by_seed in curves.items():
        if not by_seed:
            continue
        hist = by_seed[min(by_seed)]
        loss = _series(hist, "loss")
        probe = _series(hist, "knn") or _series(hist, "probe") or _series(hist, "acc")
        if loss:
            axes[0].plot(range(1, len(loss) + 1), loss, marker="o", label=method)
        if probe:
            axes[1].plot(range(1, len(probe) + 1), probe, marker="o", label=method)
    axes[0].set_title("encoder training loss per epoch")
    axes[1].set_title("online kNN category probe accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def _series(hist: Any, word: str) -> list[float]:
    """First per-epoch numeric series whose key contains ``word`` (history.json formats vary)."""
    if isinstance(hist, dict):
        for key, val in hist.items():
            if (
                word in key
                and isinstance(val, list)
                and val
                and all(isinstance(v, (int, float)) for v in val)
            ):
                return [float(v) for v in val]
        epochs = hist.get("epochs")
        if isinstance(epochs, list) and epochs and isinstance(epochs[0], dict):
            for key in epochs[0]:
                if word in key and isinstance(epochs[0][key], (int, float)):
                    return [float(e[key]) for e in epochs if key in e]
    if isinstance(hist, list) and hist and isinstance(hist[0], dict):
        return _series({"epochs": hist}, word)
    return []


def _by_category_section(results: dict) -> list[str]:
    """Random-exposure AUC within / across the query target's category, per method."""
    rows = results.get("random_exposure_by_category")
    if not rows:
        return []
    first = next(iter(rows.values()))
    share = first["random_same_category_share"]["mean"]
    clicks = first["random_same_category_click_share"]["mean"]
    if share is None or clicks is None:
        return []
    return [
        "### Random exposure by category",
        "",
        f"Random-exposure impressions whose item has the category of the query's target: "
        f"{share:.1%} of impressions, {clicks:.1%} of clicks. The overall AUC is thus "
        "largely a test of telling categories apart; within the same category, "
        "fine-grained likeness decides.",
        "",
        "| method | auc_random_exposure | same category | other categories |",
        "|---|---|---|---|",
        *[
            f"| {m} | {fmt(results['methods'][m]['auc_random_exposure'])} | "
            f"{fmt(r['auc_random_same_category'])} | {fmt(r['auc_random_other_category'])} |"
            for m, r in rows.items()
        ],
        "",
    ]


def _bias_section(results: dict) -> list[str]:
    """Representation bias per encoder (and S3's vectors) against the S1 reference."""
    rows = results.get("representation_bias")
    if not rows:
        return []
    return [
        "### Representation bias",
        "",
        "How far each space's neighbourhoods drift from the S1 reference (overlap@20 of an "
        "item's nearest neighbours in the space and in S1 space), for head and tail items; "
        "the Spearman correlation of that overlap with log(1 + training impressions); and "
        "the held-out AUC of a logistic probe predicting head vs tail from the vector. A "
        "space biased by exposure has tail overlap below head overlap, a positive "
        "correlation and a probe AUC well above 0.5. `gated`: the vector S3 retrieves with; "
        "`debiased`: the DebiasNet output alone.",
        "",
        "| space | overlap head | overlap tail | overlap vs log impressions | probe AUC |",
        "|---|---|---|---|---|",
        *[
            f"| {n} | {fmt(r['overlap_head'])} | {fmt(r['overlap_tail'])} | "
            f"{fmt(r['overlap_vs_impressions'])} | {fmt(r['exposure_probe_auc'])} |"
            for n, r in rows.items()
        ],
        "",
    ]


def _selection_bias_section(results: dict) -> list[str]:
    """The selection-bias gap Δ per space against S1, with the overlap@20 of
    ``representation_bias`` beside it (the same rows, not recomputed)."""
    rows = results.get("selection_bias")
    if not rows:
        return []
    rep = results.get("representation_bias") or {}

    def ci(e: dict) -> str:
        lo, hi = e["delta"].get("ci95") or (None, None)
        if lo is None:  # one encoder seed: the query bootstrap's interval of that seed
            cis = [c for c in e["ci95_per_seed"] if c and c[0] is not None]
            if len(cis) != 1:
                return "—"
            (lo, hi), what = cis[0], " (bootstrap over queries)"
        else:
            what = " (t over encoder seeds)"
        return f"[{lo:+.3f}, {hi:+.3f}]{what}"

    def overlap(e: dict, side: str) -> str:
        r = rep.get(e["representation_bias"], {}).get(f"overlap_{side}")
        return fmt(r) if r else "—"

    n = next(iter(rows.values()))["n_queries"]
    return [
        "### Selection-bias gap",
        "",
        "Δ = (the space's head − tail HR@10) − (S1's head − tail HR@10) on the "
        f"{n:,} labelled retrieval queries: above 0 with a CI that says so, the space "
        "favours head items beyond what S1 already does. Per seed, a paired bootstrap over "
        "queries (the same resampled queries for the space and S1); over seeds, a t "
        "interval over encoder-seed means. Head share diff: the head share of the top 10 "
        "for tail-target queries, minus S1's. Overlap@20 with S1: the representation-bias "
        "rows above.",
        "",
        "| space | Δ | 95% CI | gap | S1 gap | head share diff (tail queries) | "
        "overlap head | overlap tail |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {fmt(e['delta'])} | {ci(e)} | {fmt(e['gap'])} | "
            f"{fmt(e['gap_ref'])} | {fmt(e['tail_top10_head_share_diff'])} | "
            f"{overlap(e, 'head')} | {overlap(e, 'tail')} |"
            for name, e in rows.items()
        ],
        "",
        "![selection-bias gap](plots/selection_bias.png)",
        "",
    ]


def _ctr_head_tail_section(results: dict) -> list[str]:
    """The CTR side of the bias: each method's random-exposure AUC and calibration on head
    and tail items, and its head − tail gap beyond S1+S2's."""
    rows = results.get("ctr_head_tail")
    if not rows:
        return []

    def ci(e: dict) -> str:
        lo, hi = e["gap_delta"].get("ci95") or (None, None)
        if lo is None:  # one encoder seed: the query bootstrap's interval
            cis = e["ci95_per_seed"]
            if len(cis) != 1 or cis[0][0] is None:
                return "—"
            (lo, hi), what = cis[0], " (bootstrap)"
        else:
            what = " (t)"
        return f"[{lo:+.3f}, {hi:+.3f}]{what}"

    first = next(iter(rows.values()))
    return [
        "### The CTR side of the bias",
        "",
        "Each CTR model on the random-exposure log, split by whether the shown item is a "
        f"head item ({first['n_head']:,} impressions) or a tail item ({first['n_tail']:,}). "
        "Gap: head − tail AUC; beyond S1+S2: that gap minus S1+S2's own (per seed a paired "
        "bootstrap over queries, over seeds a t interval over encoder-seed means). "
        "Calibration: mean predicted over observed CTR; the predictions are for the top "
        "slot and the log shows items at every slot, so both sides exceed 1 by the same "
        "position factor and their ratio (tail / head) is what compares. "
        "S1+S2 item-id: S1+S2's CTR model with item-id features, trained for this table.",
        "",
        "| method | AUC head | AUC tail | gap | beyond S1+S2 | 95% CI | calibration head | "
        "calibration tail | tail / head |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {fmt(e['auc_head'])} | {fmt(e['auc_tail'])} | {fmt(e['gap'])} | "
            f"{fmt(e['gap_delta'])} | {ci(e)} | {fmt(e['calibration_head'])} | "
            f"{fmt(e['calibration_tail'])} | {fmt(e['calibration_tail_over_head'])} |"
            for name, e in rows.items()
        ],
        "",
    ]


def _selection_bias_plot(rows: dict, path: Path) -> None:
    """Δ per space with its 95% CI (over encoder seeds, or the one seed's bootstrap)."""
    plt = _plt()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(names)))
    for j, name in enumerate(names):
        e = rows[name]
        mean = e["delta"]["mean"]
        if mean is None:
            continue
        cis = [c for c in e["ci95_per_seed"] if c and c[0] is not None]
        lo, hi = e["delta"].get("ci95") or (cis[0] if len(cis) == 1 else (mean, mean))
        ax.errorbar(mean, j, xerr=[[mean - lo], [hi - mean]], fmt="o", capsize=4)
    ax.axvline(0, color="0.5", lw=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("Δ = head − tail HR@10 gap, minus S1's")
    ax.set_title("Selection-bias gap vs S1 (95% CI)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _forest_plot(rows: list[dict], path: Path) -> None:
    """One panel per metric: each pair's mean paired difference and its 95% CI."""
    plt = _plt()
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 1.3 + 0.9 * len(metrics) * 1.4))
    axes = np.atleast_1d(axes)
    for ax, metric in zip(axes, metrics, strict=True):
        sel = [r for r in rows if r["metric"] == metric and r["mean_diff"] is not None]
        y = np.arange(len(sel))
        for j, r in enumerate(sel):
            lo, hi = r["ci95"] or (r["mean_diff"], r["mean_diff"])
            color = "C2" if lo > 0 else ("C3" if hi < 0 else "C0")
            ax.plot([lo, hi], [j, j], color=color, lw=2)
            ax.plot(r["mean_diff"], j, "o", color=color)
        ax.axvline(0, color="0.5", lw=1)
        ax.set_yticks(y, [f"{r['a']} − {r['b']}" for r in sel], fontsize=8)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _comparisons_section(results: dict) -> list[str]:
    rows = results.get("comparisons")
    if not rows or all(r["mean_diff"] is None for r in rows):
        return []
    from visctr.pipeline.results import format_comparisons

    n = max(r["n"] for r in rows)
    return [
        "## Paired comparisons",
        "",
        f"Differences a − b paired by replicate (encoder seed × CTR seed; {results['seeds']} "
        f"× {results.get('ctr_seeds', 1)}). The CTR seeds of one encoder seed share its "
        "encoder, so they are averaged first, and the 95% t interval runs over the "
        f"encoder-seed means (n = encoder seeds, up to {n}). Fewer than two encoder seeds: "
        "no interval.",
        "",
        format_comparisons(rows),
        "",
        "![paired comparisons](plots/comparisons.png)",
        "",
    ]


def _ab_bars(
    ab: dict, seeds: int, path: Path, metric: str, color: str, ylabel: str, title: str
) -> None:
    """A bar per policy of ``metric`` (mean ± std over seeds); legacy and oracle in grey."""
    plt = _plt()
    names = [n for n in ab["methods"] if metric in ab["methods"][n]]
    mean = [ab["methods"][n][metric]["mean"] or 0.0 for n in names]
    std = [ab["methods"][n][metric]["std"] or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    colors = ["0.6" if n in ("legacy", "oracle") else color for n in names]
    ax.bar(np.arange(len(names)), mean, 0.7, yerr=std, capsize=3, color=colors)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (mean ± std over {seeds} seed(s))")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _ab_plot(ab: dict, seeds: int, path: Path) -> None:
    title = f"Simulated A/B test: {ab['traffic_queries']:,} fresh queries, top {ab['top_k']} shown"
    _ab_bars(ab, seeds, path, "ctr", "C0", "CTR (expected clicks / impression)", title)


def _rpm_plot(ab: dict, seeds: int, path: Path) -> None:
    """RPM per policy (mean ± std over seeds), beside the CTR plot."""
    title = f"Simulated A/B test, ranked by {ab.get('rank_by', 'ctr')}: revenue per mille"
    _ab_bars(ab, seeds, path, "rpm", "C1", "RPM (expected revenue / 1000 impressions)", title)


def _ci_per_seed(entry: dict) -> str:
    ci = entry.get("ci_per_seed")
    return "; ".join(f"[{a:+.1%}, {b:+.1%}]" for a, b in ci) if ci else "—"


def _rpm_section(ab: dict) -> list[str]:
    """Revenue per policy and, the paper's pair of online figures, the CTR and RPM lifts of
    S1+S2+D over S2 side by side."""
    rows = []
    for name, r in ab["methods"].items():
        if "rpm" not in r:
            continue
        rows.append(
            f"| {name} | {fmt(r['rpm'], 2)} | {fmt(r['rpm_sampled'], 2)} | "
            f"{fmt_pct(r.get('rpm_lift_vs_S2', {}))} | "
            f"{_ci_per_seed(r.get('rpm_lift_vs_S2', {}))} | "
            f"{fmt_pct(r.get('rpm_lift_vs_legacy', {}))} | "
            f"{fmt(r.get('rpm_oracle_share', {'mean': None}))} |"
        )
    if not rows:
        return []
    out = [
        f"### Revenue (ranked by {ab.get('rank_by', 'ctr')})",
        "",
        "RPM = 1000 × Σ expected clicks × the clicked item's cost-per-click bid / impressions "
        "(the world's hidden bids; sampled clicks beside it). "
        + (
            "Every policy ranks by eCPM = pCTR × bid: a method by its CTR model's pCTR, "
            "`legacy` by max(its score, 0) × bid over its top candidates, `oracle` by the "
            "true click probability × bid (the revenue ceiling)."
            if ab.get("rank_by") == "ecpm"
            else "Policies rank by pCTR alone (`abtest.rank_by: ctr`); bids only price the clicks."
        ),
        "",
        "| policy | RPM | RPM (sampled) | RPM lift vs S2 | RPM lift vs S2, CI per seed "
        "| RPM lift vs legacy | share of oracle RPM |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "![A/B test RPM](plots/ab_rpm.png)",
        "",
    ]
    d = ab["methods"].get("S1+S2+D")
    if d and "lift_vs_S2" in d and "rpm_lift_vs_S2" in d:
        out += [
            "The paper's two online figures (S1+S2+D against S2; the paper: +4-5% CTR, +1-2% RPM):",
            "",
            "| S1+S2+D vs S2 | lift (mean ± std over seeds) | 95% CI per seed |",
            "|---|---|---|",
            f"| CTR | {fmt_pct(d['lift_vs_S2'])} | {_ci_per_seed(d['lift_vs_S2'])} |",
            f"| RPM | {fmt_pct(d['rpm_lift_vs_S2'])} | {_ci_per_seed(d['rpm_lift_vs_S2'])} |",
            "",
        ]
    return out


def _ab_section(results: dict) -> list[str]:
    ab = results.get("ab_test")
    if not ab:
        return []
    rows = []
    for name, r in ab["methods"].items():
        ci = r.get("lift_vs_S2", {}).get("ci_per_seed")
        ci_s = "; ".join(f"[{a:+.1%}, {b:+.1%}]" for a, b in ci) if ci else "—"
        rows.append(
            f"| {name} | {fmt(r['ctr'], 4)} | {fmt(r['ctr_sampled'], 4)} | "
            f"{fmt_pct(r['lift_vs_S2'])} | {ci_s} | {fmt_pct(r['lift_vs_legacy'])} | "
            f"{fmt(r['oracle_share'])} | {fmt(r['tail_exposure_share'])} | "
            f"{fmt(r['coverage'])} | {fmt(r['gini'])} |"
        )
    return [
        "## Simulated A/B test",
        "",
        f"Every policy serves the same {ab['traffic_queries']:,} fresh queries (later than the "
        f"test split, never used for training or tuning) and shows its top {ab['top_k']}; a "
        f"method retrieves {ab['candidates']} candidates from the whole catalog with its "
        "embeddings and re-ranks them with its CTR model. CTR = expected clicks per "
        "impression under the world's hidden click model (sampled clicks beside it). Lift "
        "CIs: 95% paired bootstrap over queries, one interval per seed. `legacy` is the "
        "logging policy (control), `oracle` the true click probabilities (ceiling).",
        "",
        "| policy | CTR | CTR (sampled) | lift vs S2 | lift vs S2, CI per seed | lift vs legacy "
        "| share of oracle | tail exposure | coverage | Gini |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "![A/B test CTR](plots/ab_ctr.png)",
        "",
        *_rpm_section(ab),
    ]


def _ope_plot(results: dict, path: Path) -> None:
    """Each policy's off-policy estimate (mean ± std over seeds) per estimator, with the
    simulated A/B CTR beside them when the run has one."""
    plt = _plt()
    ope = results["ope"]
    ests = list(ope)
    names = list(ope[ests[0]])
    truth = results.get("ab_test", {}).get("methods", {})
    series = [(e, ope[e]) for e in ests]
    if truth:
        series.append(("A/B (true)", {n: truth[n] for n in names if n in truth}))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(series)
    for i, (label, by) in enumerate(series):
        mean = [(by.get(n, {}).get("ctr", {}).get("mean") or 0.0) for n in names]
        std = [(by.get(n, {}).get("ctr", {}).get("std") or 0.0) for n in names]
        x = np.arange(len(names)) + (i - (len(series) - 1) / 2) * width
        ax.bar(
            x,
            mean,
            width,
            yerr=std,
            capsize=2,
            label=label,
            color="k" if label.startswith("A/B") else None,
        )
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("CTR")
    ax.set_title("Off-policy estimates from the logs (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=len(series))
    _save(fig, path)


def _ope_section(results: dict) -> list[str]:
    ope, info = results.get("ope"), results.get("ope_info")
    if not ope or not info:
        return []
    from visctr.pipeline.ope import format_validation_table

    head = "| policy | " + " | ".join(ope) + " |"
    rows = [
        f"| {n} | " + " | ".join(fmt(ope[e][n]["ctr"], 4) for e in ope) + " |"
        for n in ope[next(iter(ope))]
    ]
    logs = []
    for name, title in (("bucket", "the random-exposure log"), ("logs", "the ordinary log")):
        src = info.get(name)
        if not src:
            continue
        if "skipped" in src:
            logs.append(f"- From {title}: skipped ({src['skipped']}).")
            continue
        line = (
            f"- From {title} (`{src['file']}`): {src['queries']:,} queries, "
            f"{src['impressions']:,} impressions, {src['clicks']:,} clicks. "
            f"Propensity: {src['propensity']}."
        )
        if "examination" in src:
            line += (
                f" Examination by position ({src['examination_model']}): "
                + ", ".join(f"{t:.2f}" for t in src["examination"])
                + "."
            )
        logs.append(line)
    out = [
        "## Off-policy estimates (from the logs)",
        "",
        "Each policy serves the queries of a log as in the A/B test; each estimator says what "
        "CTR it would get from what that log showed and what was clicked.",
        "",
        *logs,
        "",
        f"Reward model of the dm/dr estimators: the CTR model of {info['reward_model']}, "
        f"calibrated on the log. CIs: {info['ci']} (in results.json).",
        "",
        head,
        "|---|" + "---|" * len(ope),
        *rows,
        "",
        *[f"- `{e}`: {d}" for e, d in info["estimators"].items()],
        "",
    ]
    if results.get("ope_validation"):
        out += [
            "Against the simulated A/B CTR (every policy and seed): bias, RMSE, share of 95% "
            "CIs holding the true value, Spearman of estimated and true CTR (all points; mean "
            "per seed).",
            "",
            "```",
            format_validation_table(results["ope_validation"]),
            "```",
            "",
        ]
    ope_rpm = {e: by for e, by in ope.items() if any("rpm" in r for r in by.values())}
    if ope_rpm:
        out += [
            "RPM estimated with the reward click × bid (the reward model's P(click) × bid "
            "for dm/dr):",
            "",
            "| policy | " + " | ".join(ope_rpm) + " |",
            "|---|" + "---|" * len(ope_rpm),
            *[
                f"| {n} | "
                + " | ".join(fmt(ope_rpm[e][n].get("rpm", {"mean": None}), 2) for e in ope_rpm)
                + " |"
                for n in ope_rpm[next(iter(ope_rpm))]
            ],
            "",
        ]
    if results.get("ope_validation_rpm"):
        out += [
            "Against the simulated A/B RPM (the same figures as for CTR, in RPM units):",
            "",
            "```",
            format_validation_table(results["ope_validation_rpm"]),
            "```",
            "",
        ]
    return [*out, "![off-policy estimates](plots/ope_ctr.png)", ""]


def write_report(
    layout: RunLayout,
    results: dict,
    world,
    tops: dict,
    curves: dict,
    cfg: Any,
    descriptions: dict[str, str],
) -> None:
    """``report.md`` and ``plots/`` of a run; ``descriptions``: method -> one line."""
    plots = layout.plots
    plots.mkdir(parents=True, exist_ok=True)
    _examples(world, tops, min(cfg.examples, 4), plots / "retrieval_examples.png")
    _bars(
        results,
        [("head_hr@10", "head HR@10"), ("longtail_hr@10", "long-tail HR@10")],
        "Retrieval HR@10, head vs tail items",
        plots / "head_tail_hr.png",
    )
    _bars(
        results,
        [("auc", "AUC (logged test)"), ("auc_random_exposure", "AUC (random exposure)")],
        "CTR AUC, logged vs random-exposure",
        plots / "ctr_auc.png",
    )
    _curves(curves, plots / "training_curves.png")
    if results.get("ab_test"):
        _ab_plot(results["ab_test"], results["seeds"], plots / "ab_ctr.png")
        if any("rpm" in r for r in results["ab_test"]["methods"].values()):
            _rpm_plot(results["ab_test"], results["seeds"], plots / "ab_rpm.png")
    if results.get("ope"):
        _ope_plot(results, plots / "ope_ctr.png")
    if results.get("selection_bias"):
        _selection_bias_plot(results["selection_bias"], plots / "selection_bias.png")
    if any(r["mean_diff"] is not None for r in results.get("comparisons", [])):
        _forest_plot(results["comparisons"], plots / "comparisons.png")
    t = results["timings_s"]
    lines = [
        f"# visctr run — preset `{results['preset']}`, {results['seeds']} seed(s)",
        "",
        (
            f"Mean ± std over training seeds {results['training_seeds']}"
            if results["seeds"] > 1
            else f"One training seed, {results['training_seeds'][0]}: no spread, so no claim"
        )
        + f" (world seed {results['world_seed']}); total {t.get('total', 0):.0f}s.",
        "",
        "## Results",
        "",
        format_table(results, markdown=True),
        "",
        "HR@10 / long-tail / head / category recall: "
        + (
            "uniform retrieval queries"
            if results.get("retrieval_targets", "labelled").startswith("labelled")
            else "test queries, each clicked item a target (the world has no labelled "
            "retrieval set)"
        )
        + ", exact cosine search over the whole catalog. AUC, gAUC, logloss: logged test "
        "split (time-split). AUC (random exposure): the missing-at-random set the logs never "
        "see. AUC tail: logged test impressions of tail items.",
        "",
        *(
            ["Skipped on this world:", ""]
            + [f"- {k}: {v}" for k, v in results["skipped"].items()]
            + [""]
            if results.get("skipped")
            else []
        ),
        *_by_category_section(results),
        *_bias_section(results),
        *_selection_bias_section(results),
        *_ctr_head_tail_section(results),
        *_ab_section(results),
        *_comparisons_section(results),
        *_ope_section(results),
        "## Methods",
        "",
        *[f"- **{m}**: {d}" for m, d in descriptions.items()],
        "",
        "## The world",
        "",
        "```",
        format_summary(results["world"]),
        "```",
        "",
        "## Plots",
        "",
        "![retrieval examples](plots/retrieval_examples.png)",
        "",
        "![head vs tail HR@10](plots/head_tail_hr.png)",
        "",
        "![CTR AUC](plots/ctr_auc.png)",
        "",
        "![training curves](plots/training_curves.png)",
        "",
        "## Timings (s)",
        "",
        *[f"- {k}: {v:.1f}" for k, v in t.items()],
        "",
    ]
    write_text("\n".join(lines), layout.report)
