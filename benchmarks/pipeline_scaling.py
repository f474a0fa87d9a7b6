"""How each stage of ``visctr run`` grows with the work: one preset at several sizes.

Every size is the preset's world scaled by a factor (items, users, logged, random and
retrieval queries, A/B traffic), with the preset's training budget (epochs) unchanged,
so each stage's work grows with the factor. Each size runs ``visctr run --seeds 1`` in a
fresh subprocess; the table gives each stage group's seconds, its growth relative to the
first size, and the fitted exponent (1.0 = linear; fixed costs such as process start,
Lightning set-up and FAISS index builds pull it below 1 at small sizes).

    python benchmarks/pipeline_scaling.py [--preset tiny] [--factors 1 2 4]
    python benchmarks/pipeline_scaling.py --preset small --factors 0.5 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from _child import run_child
from visctr.presets import PRESET_NAMES

GROUPS = ("world", "encoder", "embed", "ctr", "evaluate", "abtest", "total")

CHILD = r"""
import json, resource, sys
from visctr.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit as e:
    if e.code:
        raise
out = sys.argv[sys.argv.index("--out") + 1]
r = json.load(open(out + "/results.json"))
print(json.dumps({"timings": r["timings_s"], "world": r["world"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scaled_config(preset: str, factor: float, path: Path) -> Path:
    from visctr.pipeline.config import resolve_run_config

    cfg = resolve_run_config(preset)
    w = cfg.world
    items = w.catalog.max_items or 60_000
    world = {
        "catalog": {"max_items": max(50, round(items * factor))},
        "n_users": max(10, round(w.n_users * factor)),
        "n_queries": max(100, round(w.n_queries * factor)),
        "n_random_queries": max(20, round(w.n_random_queries * factor)),
        "n_retrieval_queries": max(20, round(w.n_retrieval_queries * factor)),
    }
    body = {"world": world, "abtest": {"queries": max(50, round(cfg.abtest.queries * factor))}}
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def grouped(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per stage group: ``encoder s1`` and ``encoder s2`` both count as ``encoder``."""
    out = dict.fromkeys(GROUPS, 0.0)
    for k, v in timings.items():
        head = k.split(" ")[0]
        out[head] = out.get(head, 0.0) + v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=PRESET_NAMES)
    ap.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in args.factors:
            cfg = scaled_config(args.preset, f, Path(tmp) / f"x{f}.yaml")
            out = Path(tmp) / f"run_x{f}"
            argv = ["run", "--preset", args.preset, "--seeds", "1", "--config", str(cfg),
                    "--out", str(out)]  # fmt: skip
            res = run_child(CHILD, argv, f"visctr run at {f}x")
            g = grouped(res["timings"])
            w = res["world"]
            rows.append((f, g, res["peak_mb"], w))
            imp = sum(w["impressions"].values())
            print(
                f"{f:g}x: {w['items']:,} items, {imp:,} impressions: total {g['total']:.0f}s, "
                f"peak RSS {res['peak_mb']:.0f} MB",
                flush=True,
            )
    f0, g0 = rows[0][0], rows[0][1]
    print(f"\n{'stage':10s}" + "".join(f"{f'{f:g}x (s)':>12s}" for f, *_ in rows) + "   exponent")
    for s in GROUPS:
        cells = "".join(f"{g[s]:12.1f}" for _, g, *_ in rows)
        f1, g1 = rows[-1][0], rows[-1][1]
        exp = (
            math.log(g1[s] / g0[s]) / math.log(f1 / f0)
            if g0[s] > 0 and g1[s] > 0 and f1 != f0
            else float("nan")
        )
        print(f"{s:10s}{cells}   {exp:8.2f}")
    print(f"{'peak RSS':10s}" + "".join(f"{m:10.0f}MB" for _, _, m, _ in rows))


if __name__ == "__main__":
    main()
