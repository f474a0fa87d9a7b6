"""The simulated A/B test over a run directory: every method of ``pipeline.methods`` plus
the ``legacy`` control and the ``oracle`` ceiling serve the same fresh traffic
(``visctr.eval.abtest``); used by ``visctr run`` and ``visctr abtest``."""

from __future__ import annotations

from typing import Any

import numpy as np

from visctr.eval import abtest as ab
from visctr.pipeline.layout import RunLayout
from visctr.pipeline.methods import CTR_VARIANTS, METHODS, Method
from visctr.pipeline.results import aggregate, fmt, fmt_pct
from visctr.stagedir import finished
from visctr.world.store import World

BASELINES = ("S2", "legacy")
FIGURES = (
    "ctr",
    "ctr_sampled",
    "oracle_share",
    "lift_vs_S2",
    "lift_vs_legacy",
    "tail_exposure_share",
    "coverage",
    "gini",
)
# with bids in the world: revenue per mille impressions, and its lifts
REVENUE_FIGURES = (
    "rpm",
    "rpm_sampled",
    "rpm_oracle_share",
    "rpm_lift_vs_S2",
    "rpm_lift_vs_legacy",
)


class ABTest:
    """Traffic, click model and the seed-independent policies, built once per run."""

    def __init__(self, world: World, cfg: Any, echo=print) -> None:
        from visctr.errors import InputError

        self.world, self.cfg, self.echo = world, cfg, echo
        a = cfg.abtest
        self.rank_by = getattr(a, "rank_by", "ctr")
        self.bid = ab.item_bids(world)
        if self.rank_by == "ecpm" and self.bid is None:
            raise InputError(
                f"{world.root / 'items.parquet'}: abtest.rank_by is ecpm but the items have no "
                "'bid' column; simulate the world again (worlds now carry bids) or rank by ctr"
            )
        self.ecpm_bid = self.bid if self.rank_by == "ecpm" else None
        self.k = a.top_k or int(world.meta["summary"].get("top_k", 10))
        self.traffic = ab.simulate_traffic(world, a.queries, a.seed)
        self.clicks = ab.ClickModel(world, self.traffic)
        self.is_head = np.asarray(world.items["is_head"], dtype=bool)
        self.item_ids = np.asarray(world.items["item_id"], dtype=np.int64)
        legacy = ab.legacy_policy(world, self.traffic, self.k, self.ecpm_bid, a.candidates)
        self.fixed = {
            "legacy": ab.score_policy(self.clicks, legacy, 0),
            "oracle": ab.score_policy(self.clicks, self.clicks.best(self.k, self.ecpm_bid), 0),
        }

    def run_seed(
        self,
        layout: RunLayout,
        seed: int,
        ctr_seed: int = 0,
        vectors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> dict[str, dict[str, float]]:
        """Every method's policy for one training seed (and CTR seed), next to legacy and
        oracle. ``vectors``: the per-encoder cache of :meth:`policy`, shared by the CTR
        seeds of one encoder seed."""
        figures = dict(self.fixed)
        vectors = {} if vectors is None else vectors
        for name, method in METHODS.items():
            figures[name] = self.policy(layout, seed, method, vectors=vectors, ctr_seed=ctr_seed)
        return ab.summarise(figures, self.is_head, BASELINES, seed)

    def policy(
        self,
        layout: RunLayout,
        seed: int,
        method: Method,
        ctr_dir=None,
        debias: bool | None = None,
        vectors: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        ctr_seed: int = 0,
    ) -> ab.PolicyFigures:
        """What ``method``'s policy shows the traffic for training seed ``seed``: retrieve
        with its encoder's embeddings (through the debias network when its CTR model has
        one, as at serving), re-rank with its CTR model.

        ``ctr_dir``/``debias``: another CTR model on the same encoder (a tuning sweep) and
        whether it has a debias network (default: the run's own model of ``method``).
        ``vectors``: a cache per encoder recipe of the traffic's query vectors and the
        item vectors aligned to item rows (methods on one encoder share them); ``ctr_seed``:
        which of the run's CTR models of ``method`` (``visctr run --ctr-seeds``)."""
        from visctr.embeddings import align, read_embeddings

        recipe = method.encoder
        emb_dir = layout.embeddings(seed, recipe)
        cache = {} if vectors is None else vectors
        if recipe not in cache:
            qv = ab.embed_traffic(layout.encoder(seed, recipe), self.traffic)
            ids, vecs = read_embeddings(emb_dir / "items.parquet", "item_id")
            cache[recipe] = qv, align(ids, vecs, self.item_ids, emb_dir / "items.parquet")
        qv, items = cache[recipe]
        shown = serve(
            self.world, self.cfg, self.traffic, self.k, layout, seed, method, qv, items,
            ctr_dir, debias, ctr_seed,
        )  # fmt: skip
        return ab.score_policy(self.clicks, shown, seed)


def serve(
    world: World,
    cfg: Any,
    traffic: ab.Traffic,
    k: int,
    layout: RunLayout,
    seed: int,
    method: Method,
    query_vectors: np.ndarray,
    item_vectors: np.ndarray,
    ctr_dir=None,
    debias: bool | None = None,
    ctr_seed: int = 0,
) -> np.ndarray:
    """The ``[Q, k]`` item rows ``method``'s policy shows ``traffic`` for training seed
    ``seed``: retrieve with its encoder's vectors (through the debias network when its CTR
    model has one, as at serving), re-rank with its CTR model (``ctr_dir``, default the
    run's own model of ``method`` for CTR seed ``ctr_seed``; ``debias``: whether that
    model has a debias network)."""
    from visctr.s3.artifact import debias_transform

    emb_dir = layout.embeddings(seed, method.encoder)
    if ctr_dir is None:
        ctr_dir = layout.ctr(seed, method.slug, ctr_seed)
    if debias is None:
        debias = CTR_VARIANTS[method.ctr](cfg.ctr).debias.enabled
    r_items, r_queries = item_vectors, query_vectors
    if debias:  # retrieval through the debias network, as at serving
        transform = debias_transform(ctr_dir / "debias.pt")
        ids = np.asarray(world.items["item_id"])  # item_vectors are aligned to item rows
        r_items, r_queries = transform.items(item_vectors, ids), transform.queries(query_vectors)
    score = ab.ctr_scorer(ctr_dir, world, emb_dir, traffic, query_vectors)
    if getattr(cfg.abtest, "rank_by", "ctr") == "ecpm":
        bid = ab.item_bids(world)
        if bid is None:
            from visctr.errors import InputError

            raise InputError(
                f"{world.root / 'items.parquet'}: abtest.rank_by is ecpm but the items have no "
                "'bid' column (import the catalog with a bid or price column, or rank by ctr)"
            )
        score = ab.ecpm_scorer(score, bid)
    return ab.retrieve_and_rerank(r_queries, r_items, cfg.abtest.candidates, k, score)


def aggregate_ab(per_seed: list[dict[str, dict[str, float]]], test: ABTest) -> dict:
    """``results.json["ab_test"]``: per policy and figure ``{mean, std, per_seed}``; the lift
    CIs (paired bootstrap over traffic queries, 95%) per seed beside them."""
    names = list(per_seed[0])
    revenue = any("rpm" in s[n] for s in per_seed for n in names)
    figures = FIGURES + (REVENUE_FIGURES if revenue else ())
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {}
        for fig in figures:
            vals = [s[name].get(fig, float("nan")) for s in per_seed]
            row[fig] = aggregate(vals)
        for b in BASELINES:
            for lift in (f"lift_vs_{b}", f"rpm_lift_vs_{b}"):
                lo = [s[name].get(f"{lift}_ci_low") for s in per_seed]
                hi = [s[name].get(f"{lift}_ci_high") for s in per_seed]
                if lift in row and all(v is not None for v in lo):
                    row[lift]["ci_per_seed"] = [[a, c] for a, c in zip(lo, hi, strict=True)]
        methods[name] = row
    out = {
        "traffic_queries": len(test.traffic),
        "candidates": test.cfg.abtest.candidates,
        "top_k": test.k,
        "ci": "95% paired bootstrap over traffic queries, per seed",
        "methods": methods,
    }
    if revenue or test.rank_by != "ctr":  # results of runs before bids keep their shape
        out["rank_by"] = test.rank_by
        out["rpm"] = "1000 × Σ expected clicks × bid / impressions (bids: items.parquet)"
    return out


def load_run(run_dir, world_dir=None) -> tuple[RunLayout, Any, World, list[int]]:
    """A finished ``visctr run`` directory: its layout, resolved config, world (its own, or
    the one ``--world`` named when it ran, or ``world_dir``) and training seeds; an
    ``InputError`` when a CTR model of some method and seed is missing."""
    import json
    from pathlib import Path

    from visctr.config import from_dict, read_yaml
    from visctr.errors import InputError
    from visctr.pipeline.config import RunConfig

    layout = RunLayout(Path(run_dir))
    if not layout.config.is_file():
        raise InputError(f"{layout.root}: not a visctr run directory (no config.yaml)")
    cfg = from_dict(RunConfig, read_yaml(layout.config), str(layout.config))
    if world_dir is None:  # the world the run used: its own, or the one --world named
        try:
            world_dir = json.loads(layout.results.read_text()).get("world_dir")
        except (OSError, ValueError, AttributeError):
            world_dir = None
    world = World.load(Path(world_dir) if world_dir else layout.world)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    for s in seeds:
        for c in range(cfg.ctr_seeds):
            for m in METHODS.values():
                if finished(layout.ctr(s, m.slug, c)) is None:
                    raise InputError(
                        f"{layout.ctr(s, m.slug, c)}: no finished CTR model of {m.name} for "
                        f"seed {s}; finish the run first (visctr run ... --out {layout.root})"
                    )
    return layout, cfg, world, seeds


def provenance(
    layout: RunLayout, world: World, seeds: list[int], ctr_seeds: int = 1
) -> dict[str, Any]:
    """Content digests of what the A/B test and the off-policy estimates read: the world,
    every CTR ``model.pt`` and every embeddings folder (``results.json["provenance"]``,
    ``abtest.json``, ``ope.json``)."""
    from visctr.io import digest_files, file_digest

    out: dict[str, Any] = {"world": world.digest(), "models": {}, "embeddings": {}}
    recipes = sorted({m.encoder for m in METHODS.values()})
    for s in seeds:
        for c in range(ctr_seeds):
            for m in METHODS.values():
                key = f"seed_{s}/{m.slug}" if c == 0 else f"seed_{s}/ctr_{c}/{m.slug}"
                out["models"][key] = file_digest(layout.ctr(s, m.slug, c) / "model.pt")
        for r in recipes:
            out["embeddings"][f"seed_{s}/{r}"] = digest_files(
                layout.embeddings(s, r), ["*.parquet"]
            )
    return out


def changed_inputs(before: dict | None, now: dict) -> list[str]:
    """What differs between two :func:`provenance` records (empty when ``before`` is
    missing: a run from before provenance was recorded)."""
    if not before:
        return []
    out = []
    if before.get("world") != now["world"]:
        out.append("the world")
    for kind, what in (("models", "CTR model"), ("embeddings", "embeddings")):
        for key, digest in now[kind].items():
            if before.get(kind, {}).get(key) != digest:
                out.append(f"{key} {what}")
    return out


def recorded_provenance(layout: RunLayout, *files: str) -> tuple[dict | None, str | None]:
    """The provenance in the first of ``results.json`` and ``files`` (in the run
    directory) that has one, and that file's name."""
    import json

    for path in (layout.results, *(layout.root / f for f in files)):
        try:
            prov = json.loads(path.read_text()).get("provenance")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(prov, dict):
            return prov, path.name
    return None, None


def note_changes(layout: RunLayout, now: dict, echo, *files: str) -> list[str]:
    """Say, in one line, which inputs changed since the run (or the last ``files``)
    recorded them; the figures are then recomputed from what is there now."""
    before, source = recorded_provenance(layout, *files)
    changed = changed_inputs(before, now)
    if changed:
        shown = ", ".join(changed[:4]) + (
            f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        )
        echo(
            f"note: {shown} changed since {source} was written; the figures below are "
            "recomputed from the files as they are now"
        )
    return changed


def abtest_run(
    run_dir, world_dir=None, queries: int | None = None, seed: int | None = None, echo=print
) -> dict:
    """The A/B test of a finished ``visctr run`` directory, for every training seed it holds;
    writes ``abtest.json`` there (the same layout as ``results.json["ab_test"]``)."""
    from visctr.errors import InputError
    from visctr.io import write_json

    layout, cfg, world, seeds = load_run(run_dir, world_dir)
    if queries is not None:
        cfg.abtest.queries = queries
    if seed is not None:
        cfg.abtest.seed = seed
    if cfg.abtest.queries < 1:
        raise InputError("--queries must be >= 1")
    if not world.ground_truth:
        raise InputError(
            f"{world.root}: the A/B test needs the simulator's hidden click model, and this "
            "world is imported (it has none); estimate it from the logs with "
            f"'visctr abtest --run {layout.root} --estimator dr' (or ips, snips, pi, dm; dr_log without a random-exposure log), or "
            "measure a real A/B test online"
        )
    prov = provenance(layout, world, seeds, cfg.ctr_seeds)
    changed = note_changes(layout, prov, echo)
    test = ABTest(world, cfg, echo)
    per_seed = []
    for s in seeds:
        vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for c in range(cfg.ctr_seeds):
            per_seed.append(test.run_seed(layout, s, c, vectors))
            tag = f"seed {s}" + (f" ctr seed {c}" if cfg.ctr_seeds > 1 else "")
            echo(f"{tag}: " + "  ".join(f"{n} {r['ctr']:.4f}" for n, r in per_seed[-1].items()))
            if any("rpm" in r for r in per_seed[-1].values()):
                echo(
                    f"{tag} RPM: "
                    + "  ".join(
                        f"{n} {r['rpm']:.2f}" for n, r in per_seed[-1].items() if "rpm" in r
                    )
                )
    out = aggregate_ab(per_seed, test)
    out["provenance"] = prov
    out["inputs_changed_since_run"] = changed
    write_json(out, layout.root / "abtest.json")
    return out


def format_ab_table(ab: dict) -> str:
    revenue = any("rpm" in r for r in ab["methods"].values())
    head = ["policy", "ctr", "lift_vs_S2", "lift_vs_legacy", "oracle_share", "tail_exposure"]
    if revenue:
        head += ["rpm", "rpm_lift_vs_S2", "rpm_lift_vs_legacy"]
    rows = [head]
    for name, r in ab["methods"].items():
        rows.append([
            name,
            fmt(r["ctr"], 4),
            fmt_pct(r["lift_vs_S2"]),
            fmt_pct(r["lift_vs_legacy"]),
            "—" if r["oracle_share"]["mean"] is None else f"{r['oracle_share']['mean']:.3f}",
            f"{r['tail_exposure_share']['mean']:.3f}",
        ])  # fmt: skip
        if revenue:
            rows[-1] += [
                fmt(r["rpm"], 2) if "rpm" in r else "—",
                fmt_pct(r.get("rpm_lift_vs_S2", {})),
                fmt_pct(r.get("rpm_lift_vs_legacy", {})),
            ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
