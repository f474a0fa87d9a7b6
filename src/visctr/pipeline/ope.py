"""Off-policy estimates of every method's online CTR from a world's logs
(``visctr.eval.ope``): used by ``visctr run`` (``results.json["ope"]``) and by
``visctr abtest --estimator`` on a finished run.

Each method's policy serves a log's own queries exactly as in the simulated A/B test
(retrieve from the whole catalog, re-rank with its CTR model, show ``top_k``); the
estimators then score that slate against what the log showed and what was clicked.
Two logs: the random-exposure bucket, whose propensity is uniform (every catalog item is
equally likely in every slot), when the world has one; and the ordinary held-out log of
the logging policy (the test split), always, with the propensities its file recorded or
else an estimate (biased for a deterministic ranker). On a simulated world every estimate
is validated against the true A/B CTR (``results.json["ope_validation"]``); the logging
policy (``legacy``) is one more policy.

When the world's items have bids (simulated worlds; an imported catalog's ``bid`` or
``price`` column), every estimator also gives RPM with the reward click × bid of the
clicked item (the reward model's P(click) × bid for dm/dr): ``rpm`` beside ``ctr``, its
CI and lift vs S2 on the same bootstrap resamples, validated against the simulated A/B
RPM (``results.json["ope_validation_rpm"]``). See docs/ope.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visctr.errors import InputError
from visctr.eval import abtest as ab
from visctr.eval import ope
from visctr.ids import IdIndex
from visctr.pipeline.layout import RunLayout
from visctr.pipeline.methods import METHODS
from visctr.pipeline.results import aggregate, fmt, fmt_pct
from visctr.world.store import World

BASELINE = "S2"
NOTES = {
    "ips": "per-slot inverse propensity (same item, same position); unbiased, high variance",
    "snips": "ips self-normalised by the sum of its weights; slightly biased, lower variance",
    "pi": "pseudo-inverse under a position-based click model estimated from the bucket; "
    "unbiased when that model holds",
    "dm": "the reward model's predicted clicks (a CTR model calibrated on the bucket); "
    "biased as far as that model is",
    "dr": "dm + ips-weighted residuals of the bucket; unbiased when the propensities are right",
    "dr_pi": "dm + pi-weighted residuals; unbiased when the position-based model holds",
}
LOG_ESTIMATORS = ("dm", "dr", "dr_pi")  # from the ordinary log, as dm_log, dr_log, dr_pi_log
ESTIMATOR_NAMES = (*ope.ESTIMATORS, *(f"{e}_log" for e in LOG_ESTIMATORS))
LOG_NOTES = {
    "dm": "the reward model's predicted clicks, calibrated on the ordinary log; biased as far "
    "as that model is",
    "dr": "dm_log + residuals of the ordinary log weighted by 1/propensity; unbiased only with "
    "the true propensities (a propensity column); without one, dm_log corrected where a policy "
    "agrees with the logging ranker",
    "dr_pi": "dm_log + pi-weighted residuals of the ordinary log; biased when the "
    "propensities or the position-based model are wrong",
}


class EmptyLog(InputError):
    """A log with no impression or no click: nothing to estimate from (a skip, not a fault)."""


class Slates:
    """One impression log of the world as dense slates, its queries as traffic to serve.

    ``split="random"``: the random-exposure bucket; its propensity is uniform over the
    catalog unless the shop's file recorded one. ``split="test"``: the ordinary held-out
    log of the logging policy, propensities from its ``propensity`` column, or else 1 per
    logged slot (``log_propensity="deterministic"``) or the position × exposure estimate
    (``"exposure"``, :func:`visctr.eval.ope.exposure_propensity`)."""

    def __init__(
        self,
        world: World,
        split: str,
        k: int,
        max_queries: int | None = None,
        examination_model: str = "power",
        log_propensity: str = "deterministic",
    ) -> None:
        path = world.impressions_path(split)
        imp = world.read_impressions(split)
        if not imp["clicked"].any():
            raise EmptyLog(
                f"{path}: the log has no "
                + ("impression" if imp["clicked"].size == 0 else "click")
                + " to estimate from"
            )
        recorded = world.read_propensity(split)
        if recorded is not None:
            imp["propensity"] = recorded
        qids, first = np.unique(imp["query_id"], return_index=True)
        qids = qids[np.argsort(first, kind="stable")]  # in log order
        if max_queries is not None:
            qids = qids[:max_queries]
            keep = np.isin(imp["query_id"], qids)
            imp = {c: v[keep] for c, v in imp.items()}
        q_of_row = IdIndex(qids).rows(imp["query_id"])
        items = IdIndex(world.items["item_id"]).rows(
            imp["item_id"], strict=True, what="item_id", path=path
        )
        self.split, self.path = split, path
        self.n_items = len(world.items["item_id"])
        if recorded is not None:
            p, self.propensity = imp["propensity"], "the log's propensity column"
        elif split == "random":
            p = 1.0 / self.n_items
            self.propensity = f"uniform over the catalog (1/{self.n_items} per slot)"
        elif log_propensity == "deterministic":
            p = 1.0
            self.propensity = (
                "1 per logged slot (the log records none: its ranker is taken to show what it "
                "showed for sure, so dr corrects dm only where a policy agrees with it)"
            )
        else:
            p = 1.0  # replaced below, once the slates are dense
            self.propensity = (
                "estimated: share of queries showing the item x share of impressions at the "
                "position (the log records none; biased where the logging policy is not random)"
            )
        self.logged = ope.Logged.from_rows(
            q_of_row, imp["position"], items, imp["clicked"], p, len(qids), where=str(path)
        )
        if recorded is None and split != "random" and log_propensity == "exposure":
            lg = self.logged
            self.logged = ope.Logged(lg.items, lg.clicks, ope.exposure_propensity(lg))
        if self.logged.clicks.sum() == 0:  # none left among the first max_queries
            raise EmptyLog(f"{path}: the log's first {len(qids)} queries have no click")
        # the bucket's θ; an ordinary log's comes with its reward model (see OPE._reward)
        self.theta = ope.examination(self.logged, examination_model) if split == "random" else None
        self.k = k
        rows = IdIndex(world.queries["query_id"]).rows(
            qids, strict=True, what="query_id", path=path
        )
        self.query_rows = rows
        self.query_ids = qids
        targets = IdIndex(world.items["item_id"]).rows(world.queries["target_item_id"][rows])
        self.traffic = ab.Traffic(
            users=np.asarray(world.queries["user_id"][rows], dtype=np.int64),
            targets=targets,
            timestamps=np.asarray(world.queries["timestamp"][rows], dtype=np.int64),
            images=np.empty((0, 1, 1, 1), dtype=np.uint8),  # read only where needed (legacy)
        )

    def __len__(self) -> int:
        return len(self.logged)

    def with_images(self, world: World) -> ab.Traffic:
        imgs = np.asarray(
            world.query_images[np.asarray(world.queries["image_row"])[self.query_rows]]
        )
        t = self.traffic
        return ab.Traffic(t.users, t.targets, t.timestamps, imgs)


class OPE:
    """The logs to estimate from, the logging baseline and the seed-independent policies,
    built once.

    Two sources: the random-exposure bucket (``ips``, ``snips``, ``pi``, ``dm``, ``dr``,
    ``dr_pi``), when the world has one, and the ordinary held-out log of the logging policy
    (``dm_log``, ``dr_log``, ``dr_pi_log``), always."""

    def __init__(self, world: World, cfg: Any, echo=print) -> None:
        self.world, self.cfg, self.echo = world, cfg, echo
        self.k = cfg.abtest.top_k or int(world.meta["summary"].get("top_k", 10))
        c = cfg.ope
        self.sources: dict[str, Slates] = {}
        if world.has_random_exposure:
            self.sources["bucket"] = Slates(world, "random", self.k, c.max_queries, c.examination)
        self.skipped: dict[str, str] = {}
        try:
            self.sources["logs"] = Slates(
                world, "test", self.k, c.max_queries, log_propensity=c.log_propensity
            )
        except EmptyLog as e:  # an empty test split, or one without a click
            if not self.sources:
                raise
            self.skipped["logs"] = str(e)
        self.item_ids = np.asarray(world.items["item_id"], dtype=np.int64)
        self.bid = ab.item_bids(world)  # revenue estimates when the items have bids
        ecpm = self.bid if getattr(cfg.abtest, "rank_by", "ctr") == "ecpm" else None
        self.fixed: dict[str, dict[str, np.ndarray]] = {n: {} for n in self.sources}
        if world.ground_truth:  # the logging policy needs the hidden popularity
            for n, src in self.sources.items():
                traffic = src.with_images(world)
                self.fixed[n]["legacy"] = ab.legacy_policy(
                    world, traffic, self.k, ecpm, cfg.abtest.candidates
                )
        test = world.read_impressions("test")
        _, q = np.unique(test["query_id"], return_inverse=True)
        clicks = np.bincount(q, weights=test["clicked"].astype(np.float64))
        shown = np.bincount(q).astype(np.float64)
        self.logging = {"num": clicks, "den": shown}

    def run_seed(
        self, layout: RunLayout, seed: int, ctr_seed: int = 0
    ) -> dict[str, dict[str, dict[str, float]]]:
        """``{estimator: {policy: figures}}`` for one training seed (and CTR seed)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for name, src in self.sources.items():
            out.update(self._run_source(layout, seed, name, src, ctr_seed))
        return out

    def _run_source(self, layout, seed, name: str, src: Slates, ctr_seed: int = 0):
        from visctr.embeddings import align, read_embeddings
        from visctr.pipeline.abtest import serve

        vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def vecs(recipe: str) -> tuple[np.ndarray, np.ndarray]:
            if recipe not in vectors:
                emb = layout.embeddings(seed, recipe)
                ids, v = read_embeddings(emb / "items.parquet", "item_id")
                qids, qv = read_embeddings(emb / "queries.parquet", "query_id")
                vectors[recipe] = (
                    align(qids, qv, src.query_ids, emb / "queries.parquet", "query_id"),
                    align(ids, v, self.item_ids, emb / "items.parquet"),
                )
            return vectors[recipe]

        slates = dict(self.fixed[name])
        for m_name, method in METHODS.items():
            qv, items = vecs(method.encoder)
            slates[m_name] = serve(
                self.world, self.cfg, src.traffic, self.k, layout, seed, method, qv, items,
                ctr_seed=ctr_seed,
            )  # fmt: skip
        theta, r_logged, r_shown = self._reward(layout, seed, vecs, src, slates, ctr_seed)
        if name == "bucket":
            return self._estimate(src, slates, theta, r_logged, r_shown, seed, ope.ESTIMATORS)
        return self._estimate(src, slates, theta, r_logged, r_shown, seed, LOG_ESTIMATORS)

    def _reward(self, layout, seed, vecs, src: Slates, slates, ctr_seed: int = 0):
        """θ and the reward model's P(click) of every logged slot and every policy's slot.

        The reward model is the CTR model of ``ope.reward_model`` (trained on the training
        logs; its score at the top slot), calibrated on the log by a logistic regression on
        that score and the position, then read at the top slot and scaled by θ, so that it
        follows the position-based model ``pi`` and ``dr_pi`` assume. θ is the bucket's
        (fitted on its clicks by position, where items do not depend on the position), or
        for an ordinary log the calibration's position effect at equal score."""
        method = METHODS[self.cfg.ope.reward_model]
        qv, _ = vecs(method.encoder)
        score = ab.ctr_scorer(
            layout.ctr(seed, method.slug, ctr_seed),
            self.world,
            layout.embeddings(seed, method.encoder),
            src.traffic,
            qv,
        )
        lg = src.logged
        mask = lg.mask
        s_logged = score(np.where(mask, lg.items, 0)).astype(np.float64)
        pos = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
        beta = ope.fit_calibration(s_logged[mask], pos[mask], lg.clicks[mask], mask.shape[1])
        theta = src.theta if src.theta is not None else ope.examination_from_calibration(beta)

        def reward(s: np.ndarray) -> np.ndarray:
            top = ope.calibrated(beta, s, np.zeros(s.shape, dtype=np.int64))
            return top * ope.positions_theta(theta, s.shape[1])[None, :]

        r_shown = {n: reward(score(s).astype(np.float64)) for n, s in slates.items()}
        return theta, reward(s_logged), r_shown

    def _estimate(self, src, slates, theta, r_logged, r_shown, seed, estimators):
        c = self.cfg.ope
        suffix = "" if src.split == "random" else "_log"
        names = list(slates)
        est: dict[tuple[str, str], ope.Estimate] = {}
        for e in estimators:
            for n in names:
                est[e, n] = ope.estimate(e, src.logged, slates[n], theta, r_logged, r_shown[n])
        keys = list(est)
        nums = [est[k].num for k in keys]
        dens = [est[k].den for k in keys]
        if suffix:  # the log's own CTR on the same queries: its lift CIs are paired
            lg = src.logged
            nums.append((lg.clicks * lg.mask).sum(1))
            dens.append(lg.mask.sum(1).astype(np.float64))
        stream = c.seed + seed + (0 if not suffix else 2)
        draws = ope.bootstrap_ratios(np.stack(nums), np.stack(dens), c.bootstrap, stream)
        col = {k: i for i, k in enumerate(keys)}
        if suffix:
            log_ctr = float(nums[-1].sum() / dens[-1].sum())
            log_draws = draws[:, -1]
        else:
            log = self.logging
            log_draws = ope.bootstrap_ratios(
                log["num"], log["den"], c.bootstrap, c.seed + seed + 1
            )[:, 0]
            log_ctr = float(log["num"].sum() / log["den"].sum())
        out: dict[str, dict[str, dict[str, float]]] = {}
        for e in estimators:
            out[e + suffix] = {}
            for n in names:
                x = est[e, n]
                d = draws[:, col[e, n]]
                lo, hi = ope.interval(d)
                row = {"ctr": x.ctr, "ci_low": lo, "ci_high": hi, "ess": x.ess}
                row.update(_lift_vs_baseline(est, draws, col, e, n, "lift_vs_S2"))
                row["lift_vs_logging"] = x.ctr / log_ctr - 1 if log_ctr > 0 else float("nan")
                with np.errstate(invalid="ignore", divide="ignore"):
                    lo, hi = ope.interval(d / log_draws - 1)
                row["lift_vs_logging_ci_low"], row["lift_vs_logging_ci_high"] = lo, hi
                out[e + suffix][n] = row
        if self.bid is not None:
            self._revenue(out, src, slates, theta, r_logged, r_shown, stream, estimators)
        return out

    def _revenue(self, out, src, slates, theta, r_logged, r_shown, stream, estimators) -> None:
        """``rpm`` (+ CI, + lift vs S2) of every estimator and policy into ``out``: the same
        estimators with the reward click × bid (the reward model's P(click) × bid), on the
        same bootstrap resamples as the CTR (same stream, same queries)."""
        c = self.cfg.ope
        suffix = "" if src.split == "random" else "_log"
        lg = src.logged
        mask = lg.mask
        b_logged = np.where(mask, self.bid[np.where(mask, lg.items, 0)], 0.0)
        rev = ope.Logged(lg.items, lg.clicks * b_logged, lg.propensity)
        r_rev = r_logged * b_logged
        est: dict[tuple[str, str], ope.Estimate] = {}
        for e in estimators:
            for n, shown in slates.items():
                r_s = r_shown[n] * self.bid[shown]
                est[e, n] = ope.estimate(e, rev, shown, theta, r_rev, r_s)
        keys = list(est)
        col = {k: i for i, k in enumerate(keys)}
        draws = ope.bootstrap_ratios(
            np.stack([est[k].num for k in keys]),
            np.stack([est[k].den for k in keys]),
            c.bootstrap,
            stream,
        )
        for e, n in keys:
            x, d = est[e, n], draws[:, col[e, n]]
            row = out[e + suffix][n]
            row["rpm"] = 1000 * x.ctr
            lo, hi = ope.interval(1000 * d)
            row["rpm_ci_low"], row["rpm_ci_high"] = lo, hi
            row.update(_lift_vs_baseline(est, draws, col, e, n, "rpm_lift_vs_S2"))

    def info(self) -> dict[str, Any]:
        log = self.logging
        c = self.cfg.ope
        out: dict[str, Any] = {
            "top_k": self.k,
            "candidates": self.cfg.abtest.candidates,
            "reward_model": c.reward_model,
            "logging_ctr": float(log["num"].sum() / log["den"].sum()),
            "ci": f"95% bootstrap over the log's queries ({c.bootstrap} resamples), per seed; "
            "lift_vs_S2 paired on the same resamples; lift_vs_logging paired for the "
            "ordinary log's estimators, and for the bucket's against an independent "
            "bootstrap of the logged test CTR",
            "estimators": {},
        }
        for name, why in self.skipped.items():
            out[name] = {"skipped": why}
        for name, src in self.sources.items():
            lg = src.logged
            out[name] = {
                "file": src.path.name,
                "queries": len(lg),
                "impressions": int(lg.mask.sum()),
                "clicks": int(lg.clicks.sum()),
                "propensity": src.propensity,
            }
            if name == "bucket":
                out[name]["examination"] = [round(float(t), 4) for t in src.theta]
                out[name]["examination_model"] = c.examination
                out["estimators"].update({e: NOTES[e] for e in ope.ESTIMATORS})
            else:
                out[name]["examination_model"] = "the reward model's calibration (per seed)"
                out["estimators"].update({f"{e}_log": LOG_NOTES[e] for e in LOG_ESTIMATORS})
        return out


def headline(row: dict) -> str:
    """One line of a seed's estimates: dr_pi from the bucket, else dr_pi_log."""
    e = "dr_pi" if "dr_pi" in row else "dr_pi_log"
    return f"{e} " + "  ".join(f"{n} {r['ctr']:.4f}" for n, r in row[e].items())


def aggregate_ope(per_seed: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """``results.json["ope"]``: ``{estimator: {policy: {ctr, ci95, ess, lift_vs_S2,
    lift_vs_logging}}}``; each figure ``{mean, std, per_seed}``, each CI per seed."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for e, by_policy in per_seed[0].items():
        out[e] = {}
        for n in by_policy:
            rows = [s[e][n] for s in per_seed]
            entry: dict[str, Any] = {
                "ctr": aggregate([r["ctr"] for r in rows]),
                "ci95": [[r["ci_low"], r["ci_high"]] for r in rows],
                "ess": aggregate([r["ess"] for r in rows]),
            }
            if "rpm" in rows[0]:
                entry["rpm"] = aggregate([r["rpm"] for r in rows])
                entry["rpm_ci95"] = [[r["rpm_ci_low"], r["rpm_ci_high"]] for r in rows]
            for lift in ("lift_vs_S2", "lift_vs_logging", "rpm_lift_vs_S2"):
                if lift in rows[0]:
                    entry[lift] = {
                        **aggregate([r[lift] for r in rows]),
                        "ci95": [[r[f"{lift}_ci_low"], r[f"{lift}_ci_high"]] for r in rows],
                    }
            out[e][n] = entry
    return _finite(out)


def validation(
    ope_results: dict, ab_test: dict, figure: str = "ctr"
) -> dict[str, dict[str, float]]:
    """``results.json["ope_validation"]``: each estimator against the simulated A/B CTR;
    with ``figure="rpm"`` (``ope_validation_rpm``) against its RPM (empty when either side
    has no RPM)."""
    ci = "ci95" if figure == "ctr" else f"{figure}_ci95"
    truth = {n: r[figure]["per_seed"] for n, r in ab_test["methods"].items() if figure in r}
    estimates = {
        e: {n: r[figure]["per_seed"] for n, r in by.items() if figure in r}
        for e, by in ope_results.items()
    }
    intervals = {
        e: {n: r[ci] for n, r in by.items() if figure in r} for e, by in ope_results.items()
    }
    return _finite(ope.validate(estimates, intervals, truth))


def _finite(x):
    """NaN/inf as ``None`` (valid JSON), recursively."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def ope_run(run_dir, world_dir=None, echo=print) -> dict:
    """The off-policy estimates of a finished ``visctr run`` directory, for every training
    seed it holds; writes ``ope.json`` there (``{"ope", "ope_info", "ope_validation"}``,
    the validation when the run has a simulated A/B test)."""
    import json

    from visctr.io import write_json
    from visctr.pipeline.abtest import changed_inputs, load_run, note_changes, provenance

    layout, cfg, world, seeds = load_run(run_dir, world_dir)
    prov = provenance(layout, world, seeds, cfg.ctr_seeds)
    changed = note_changes(layout, prov, echo, "ope.json")
    est = OPE(world, cfg, echo)
    per_seed = []
    for s in seeds:
        for c in range(cfg.ctr_seeds):
            per_seed.append(est.run_seed(layout, s, c))
            tag = f"seed {s}" + (f" ctr seed {c}" if cfg.ctr_seeds > 1 else "")
            echo(f"{tag}: " + headline(per_seed[-1]))
    out: dict[str, Any] = {
        "ope": aggregate_ope(per_seed),
        "ope_info": est.info(),
        "provenance": prov,
        "inputs_changed_since_run": changed,
    }
    ab_test = None
    for path in (layout.root / "abtest.json", layout.results):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if changed_inputs(data.get("provenance"), prov):
            echo(f"note: {path.name}'s A/B test ran on other inputs: not used as the truth")
            continue
        ab_test = data if path.name == "abtest.json" else data.get("ab_test")
        if ab_test:
            break
    if ab_test and len(next(iter(ab_test["methods"].values()))["ctr"]["per_seed"]) == len(seeds):
        out["ope_validation"] = validation(out["ope"], ab_test)
        rpm = validation(out["ope"], ab_test, "rpm")
        if rpm:
            out["ope_validation_rpm"] = rpm
    write_json(out, layout.root / "ope.json")
    return out


def format_ope_table(ope_results: dict, estimator: str) -> str:
    head = ["policy", f"ctr ({estimator})", "95% CI (first seed)", "lift_vs_S2", "lift_vs_logging"]
    revenue = any("rpm" in r for r in ope_results[estimator].values())
    if revenue:
        head += [f"rpm ({estimator})", "95% CI (first seed)", "rpm_lift_vs_S2"]
    rows = [head]
    for name, r in ope_results[estimator].items():
        lo, hi = r["ci95"][0]
        ci = "—" if lo is None else f"[{lo:.4f}, {hi:.4f}]"
        rows.append([
            name,
            fmt(r["ctr"], 4),
            ci,
            fmt_pct(r["lift_vs_S2"]) if "lift_vs_S2" in r else "—",
            fmt_pct(r["lift_vs_logging"]),
        ])  # fmt: skip
        if revenue:
            lo, hi = r.get("rpm_ci95", [[None, None]])[0]
            rows[-1] += [
                fmt(r["rpm"], 2) if "rpm" in r else "—",
                "—" if lo is None else f"[{lo:.2f}, {hi:.2f}]",
                fmt_pct(r["rpm_lift_vs_S2"]) if "rpm_lift_vs_S2" in r else "—",
            ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def format_validation_table(v: dict) -> str:
    head = ["estimator", "bias", "rmse", "coverage", "spearman", "spearman/seed", "n"]
    rows = [head]
    for e, r in v.items():
        rows.append([
            e,
            _num(r["bias"], "+.4f"),
            _num(r["rmse"], ".4f"),
            _num(r["coverage"], ".0%"),
            _num(r["spearman"], ".3f"),
            _num(r["spearman_per_seed"], ".3f"),
            str(r["n"]),
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _num(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _lift_vs_baseline(est, draws, col, e: str, n: str, key: str) -> dict[str, float]:
    """``{key, key_ci_low, key_ci_high}``: policy ``n``'s estimate by ``e`` relative to the
    baseline's, its CI paired on the same bootstrap resamples; empty for the baseline itself
    or when the baseline was not estimated."""
    if (e, BASELINE) not in col or n == BASELINE:
        return {}
    base = est[e, BASELINE].ctr
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = draws[:, col[e, n]] / draws[:, col[e, BASELINE]] - 1
    lo, hi = ope.interval(lift)
    point = est[e, n].ctr / base - 1 if base > 0 else float("nan")
    return {key: point, f"{key}_ci_low": lo, f"{key}_ci_high": hi}
