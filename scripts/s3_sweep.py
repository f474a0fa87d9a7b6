"""Sweep S3 (debias) CTR variants on one seed directory of a ``visctr run``.

The "Tuning" table of docs/results.md came from this script on a *dev* world, a run with another
world seed than the reported one (``visctr run --preset small --seed 100 --seeds 1 --out
runs/dev``), so the reported world's random-exposure set is never used to choose:

    python scripts/s3_sweep.py runs/dev 100 \\
        'plain={}' 'farthest={"debias": {"enabled": true}}' \\
        'hard={"debias": {"enabled": true, "negatives": "hard"}}'

Each ``tag=JSON`` is a set of ``CTRConfig`` overrides (``debias`` and ``ips`` as nested
dicts: ``'ips={"ips": {"enabled": true}}'`` is S1+S2+IPS's CTR model),
trained on the embeddings of S1+S2+D's encoder (with its S1 reference, paths from
``RunLayout`` and ``pipeline.methods``) for CTR seeds 0-2 (``--ctr-seeds``). The script prints the
random-exposure AUC, logged AUC, retrieval HR@10 and the simulated A/B test of each
(retrieval through the debias network when it is on; ``ab_ctr`` expected clicks per
impression on the run's own A/B traffic, ``lift_S2`` / ``lift_S1S2`` against the run's S2
and S1+S2 policies, ``tail_exp`` the share of impressions on tail items), then mean ± std
per tag. ``--no-ab`` skips the A/B figures. ``--detach-debias`` is a diagnostic: the
CTR loss then does not train the debias network (only the triplet term does).

``--encoder s2`` trains the variants on the S2 encoder's embeddings instead (where the
representational bias should be largest); ``--baseline TAG`` (default: the first tag)
adds, for every other tag, the paired difference to it per metric over the CTR seeds
with a 95% t interval (``visctr.pipeline.results.paired_ci``); ``--json FILE`` writes
every per-seed figure and those comparisons. The variants start from the run's own
``ctr`` config (its ``config.yaml``), so they differ from its methods only by the
overrides. ``auc_same_cat``: the random-exposure AUC within the query target's category.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from visctr.ctr import CTRConfig, train_ctr
from visctr.eval.ctr import evaluate_ctr
from visctr.eval.retrieval import evaluate_retrieval
from visctr.pipeline.layout import RunLayout
from visctr.pipeline.methods import METHODS
from visctr.s3.artifact import debias_transform
from visctr.world import World

KEYS = ("auc_random_exposure", "auc_same_cat", "auc", "hr@10", "longtail_hr@10")
AB_KEYS = ("ab_ctr", "lift_S2", "lift_S1S2", "tail_exp")


class ABFigures:
    """The run's A/B test (``pipeline.abtest.ABTest``) with its S2 and S1+S2 policies as
    baselines; ``figures`` scores a sweep variant's CTR model on the same traffic."""

    def __init__(self, layout: RunLayout, world: World, seed: int) -> None:
        from visctr.config import from_dict, read_yaml
        from visctr.pipeline.abtest import ABTest
        from visctr.pipeline.config import RunConfig

        cfg = from_dict(RunConfig, read_yaml(layout.config), str(layout.config))
        self.test = ABTest(world, cfg, echo=lambda *_: None)
        self.layout, self.seed = layout, seed
        self.vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.base = {name: self.test.policy(layout, seed, METHODS[name], vectors=self.vectors)
                     for name in ("S2", "S1+S2")}  # fmt: skip

    def figures(self, ctr_dir: Path, debiased: bool, method: str = "S1+S2+D") -> dict[str, float]:
        from visctr.eval import abtest as ab

        f = self.test.policy(self.layout, self.seed, METHODS[method], ctr_dir, debiased,
                             self.vectors)  # fmt: skip
        s2, s1s2 = self.base["S2"], self.base["S1+S2"]
        return {
            "ab_ctr": f.ctr,
            "lift_S2": f.ctr / s2.ctr - 1,
            "lift_S1S2": f.ctr / s1s2.ctr - 1,
            "tail_exp": ab.exposure(f.shown, self.test.is_head)["tail_exposure_share"],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a visctr run directory (holds world/)")
    ap.add_argument("seed", type=int, help="the training seed whose embeddings to use")
    ap.add_argument("variants", nargs="+", help="tag=JSON of CTRConfig overrides")
    ap.add_argument("--ctr-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/s3_sweep"))
    ap.add_argument("--encoder", choices=("s1_s2", "s2"), default="s1_s2",
                    help="the encoder recipe whose embeddings the variants use")  # fmt: skip
    ap.add_argument("--baseline", default=None, help="tag the others are paired against")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--detach-debias", action="store_true")
    ap.add_argument("--no-ab", action="store_true", help="skip the simulated A/B figures")
    args = ap.parse_args()
    if args.detach_debias:
        from visctr.s3.net import DebiasHead

        DebiasHead.detach_debiased = True
    from visctr.config import from_dict, merge, read_yaml, to_dict
    from visctr.io import write_json
    from visctr.pipeline.config import RunConfig
    from visctr.pipeline.results import paired_ci

    layout = RunLayout(args.run)
    world = World.load(layout.world)
    run_cfg = from_dict(RunConfig, read_yaml(layout.config), str(layout.config))
    # the policy whose encoder (and S1 reference) the variants use in the A/B test
    method_name = "S1+S2+D" if args.encoder == "s1_s2" else "S2"
    emb = layout.embeddings(args.seed, args.encoder)
    abf = None if args.no_ab else ABFigures(layout, world, args.seed)
    keys = KEYS + (() if abf is None else AB_KEYS)
    if abf is not None:
        print("baselines: " + "  ".join(f"{n} ab_ctr {f.ctr:.4f}" for n, f in abf.base.items()))
    results: dict[str, list[dict]] = {}
    tags = []
    for item in args.variants:
        tag, _, spec = item.partition("=")
        tags.append(tag)
        base = to_dict(run_cfg.ctr)
        base["trainer"] = {**base["trainer"], "progress_bar": False}
        cfg = from_dict(CTRConfig, merge(base, json.loads(spec or "{}")), f"variant {tag}")
        debias = cfg.debias
        for seed in args.ctr_seeds:
            out = args.out / args.run.name / args.encoder / tag / str(seed)
            reads_ref = debias.enabled and debias.needs_reference
            ref = layout.embeddings(args.seed, "s1") if reads_ref else None
            train_ctr(world, emb, out, cfg, seed, reference=ref)
            m = evaluate_ctr(out, world, emb, by_category=world.ground_truth)
            m["auc_same_cat"] = m.get("auc_random_same_category", float("nan"))
            transform = debias_transform(out / "debias.pt") if debias.enabled else None
            m.update(evaluate_retrieval(world, emb, transform)[0])
            if abf is not None:
                m.update(abf.figures(out, debias.enabled, method_name))
            results.setdefault(tag, []).append({k: float(v) for k, v in m.items()})
            print(tag, seed, "  ".join(f"{k} {m[k]:.4f}" for k in keys), flush=True)
    print()
    for tag, ms in results.items():
        cols = [f"{k} {np.mean([m[k] for m in ms]):.4f}±{np.std([m[k] for m in ms]):.4f}"
                for k in keys]  # fmt: skip
        print(f"{tag:12s}", "  ".join(cols))
    baseline = args.baseline or tags[0]
    if baseline not in results:
        raise SystemExit(f"--baseline {baseline!r} is not one of the tags {tags}")
    comparisons = []
    print(f"\npaired differences vs {baseline} over CTR seeds {args.ctr_seeds} (95% t interval)")
    for tag in tags:
        if tag == baseline:
            continue
        cols = []
        for k in keys:
            r = paired_ci([m[k] for m in results[tag]], [m[k] for m in results[baseline]])
            comparisons.append({"a": tag, "b": baseline, "metric": k, **r})
            ci = "" if r["ci95"] is None else f" [{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}]"
            cols.append(f"{k} {r['mean_diff']:+.4f}{ci}")
        print(f"{tag:12s}", "  ".join(cols))
    if args.json is not None:
        write_json(
            {"run": str(args.run), "seed": args.seed, "encoder": args.encoder,
             "ctr_seeds": args.ctr_seeds, "variants": dict(zip(tags, args.variants, strict=True)),
             "per_seed": results, "comparisons": comparisons},
            args.json,
        )  # fmt: skip


if __name__ == "__main__":
    main()
