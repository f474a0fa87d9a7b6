"""Which off-policy estimator to trust, and at what random-exposure bucket size.

For each finished ``visctr run`` directory on a simulated world (one per world seed) and
each bucket size, estimate every policy's CTR from the first N queries of the world's
random-exposure log and score each estimator against the run's simulated A/B CTR: bias,
RMSE, 95% CI coverage, Spearman over (policy, seed). Pools the runs for each size. The
ordinary log's estimators (``*_log``) use the first N queries of the test split. When the
worlds have bids and the runs' A/B tests report RPM, the same scores for the estimated RPM
(reward click × bid) against the simulated A/B RPM follow each CTR table.

    python scripts/ope_check.py runs/small3 [runs/small3-w1 ...] --queries 1000 5000 20000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from visctr.pipeline.abtest import load_run
    from visctr.pipeline.ope import OPE, aggregate_ope, format_validation_table, validation

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished visctr run directories")
    ap.add_argument(
        "--queries",
        nargs="+",
        type=int,
        default=[1000, 5000, 20000],
        help="bucket sizes in queries (x top_k impressions each)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the tables as JSON here")
    args = ap.parse_args(argv)
    table: dict[str, dict] = {}
    for n in args.queries:
        pooled_ope: dict = {}
        pooled_ab: dict = {"methods": {}}
        for i, run in enumerate(args.runs):
            layout, cfg, world, seeds = load_run(run)
            results = json.loads(layout.results.read_text())
            if "ab_test" not in results:
                print(f"{run}: no simulated A/B test in results.json", file=sys.stderr)
                return 2
            cfg.ope.max_queries = n
            est = OPE(world, cfg, echo=lambda *_: None)
            per_seed = [est.run_seed(layout, s) for s in seeds]
            agg = aggregate_ope(per_seed)
            for e, by in agg.items():  # pool runs as more seeds of each policy
                for p, row in by.items():
                    dst = pooled_ope.setdefault(e, {}).setdefault(
                        p, {"ctr": {"per_seed": []}, "ci95": []}
                    )
                    dst["ctr"]["per_seed"] += row["ctr"]["per_seed"]
                    dst["ci95"] += row["ci95"]
                    if "rpm" in row:
                        dst.setdefault("rpm", {"per_seed": []})["per_seed"] += row["rpm"][
                            "per_seed"
                        ]
                        dst.setdefault("rpm_ci95", []).extend(row["rpm_ci95"])
            for p, row in results["ab_test"]["methods"].items():
                dst = pooled_ab["methods"].setdefault(p, {"ctr": {"per_seed": []}})
                dst["ctr"]["per_seed"] += row["ctr"]["per_seed"]
                if "rpm" in row:
                    dst.setdefault("rpm", {"per_seed": []})["per_seed"] += row["rpm"]["per_seed"]
            info = est.info()
            if "bucket" not in info:
                print(f"{run}: the world has no random-exposure log", file=sys.stderr)
                return 2
            print(
                f"{run} ({i + 1}/{len(args.runs)}): {n:,} queries, "
                f"{info['bucket']['impressions']:,} bucket and {info['logs']['impressions']:,} "
                "ordinary-log impressions"
            )
        v = validation(pooled_ope, pooled_ab)
        table[str(n)] = v
        print(f"\nbucket of {n:,} queries, {len(args.runs)} world(s):")
        print(format_validation_table(v))
        rpm = validation(pooled_ope, pooled_ab, "rpm")
        if rpm:  # worlds with bids: the estimated RPM against the A/B RPM
            table[f"{n}_rpm"] = rpm
            print(f"RPM (reward click × bid), bucket of {n:,} queries:")
            print(format_validation_table(rpm))
    if args.out is not None:
        from visctr.io import write_json

        write_json(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
