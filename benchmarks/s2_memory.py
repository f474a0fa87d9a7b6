"""Peak RSS of S2's click-pair reader on a 4M- vs a 16M-row impressions log.

S2 streams its (query photo, clicked item) pairs from the log (Parquet record batches ->
shuffle buffer of click pairs -> whole batches with their images), so peak memory should
not grow with the number of impressions. Each size reads one full epoch of
``ClickPairs`` (every batch, images fetched) in a fresh subprocess over the same
synthetic world as ``ctr_memory.py`` (6k items, 100k queries, 28x28 grey images; only the
impressions log differs) and reports its own ``ru_maxrss``. For comparison it also runs
the reader S2 had before, which read the whole training log into memory (``--no-before``
skips it). What still grows with the log is the set of distinct clicked (query, item)
keys that masks false negatives, 8 bytes per click: printed as ``keys``.

    python benchmarks/s2_memory.py [--rows 4000000 16000000] [--buffer 262144]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _child import print_peak_ratio, run_child
from ctr_memory import N_ITEMS, N_QUERIES
from ctr_memory import build_world as build_log_world

SIZE = 28


def build_world(root: Path, n_rows: int) -> Path:
    """``ctr_memory``'s world with real-sized image stores (the reader fetches images)."""
    world, _ = build_log_world(root, n_rows)
    meta = json.loads((world / "world.json").read_text())
    meta["image_shape"] = [1, SIZE, SIZE]
    (world / "world.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(1)
    for name, n in (("items", N_ITEMS), ("queries", N_QUERIES)):
        np.save(world / "images" / f"{name}.npy",
                rng.integers(0, 256, (n, 1, SIZE, SIZE), dtype=np.uint8))  # fmt: skip
    return world


CHILD = r"""
import json, resource, sys, time
import numpy as np
from visctr.encoders.data import ClickPairs  # torch and the rest, before the baseline
from visctr.world import World
world = World.load(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if sys.argv[2] == "stream":
    pairs = ClickPairs(world, 256, 0, shuffle_buffer=int(sys.argv[3]))
    batches = sum(1 for _ in pairs)
    clicks, keys = pairs.n, pairs.clicked_keys().numel()
else:  # what S2's pair dataset did before it streamed: the whole log in memory
    from visctr.ids import IdIndex
    imp = world.read_impressions("train")
    hit = imp["clicked"] == 1
    qid, iid = imp["query_id"][hit].astype(np.int64), imp["item_id"][hit].astype(np.int64)
    q = IdIndex(world.queries["query_id"]).rows(qid, strict=True)
    i = IdIndex(world.items["item_id"]).rows(iid, strict=True)
    clicks, batches, keys = int(hit.sum()), None, None
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "wall_s": wall,
                  "clicks": clicks, "batches": batches, "keys": keys}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[4_000_000, 16_000_000])
    ap.add_argument("--buffer", type=int, default=262_144, help="S2 shuffle_buffer (clicks)")
    ap.add_argument("--no-before", action="store_true", help="skip the whole-log reader")
    args = ap.parse_args()
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            world = build_world(Path(tmp), n)
            gen_s = time.perf_counter() - t0
            res = run_child(
                CHILD, [str(world), "stream", str(args.buffer)], f"S2 pairs, {n:,} rows"
            )
            res["rows"] = n
            results.append(res)
            print(
                f"{n:>12,} rows: peak RSS {res['peak_mb']:6.0f} MB (after imports and World.load "
                f"{res['base_mb']:.0f} MB); {res['clicks']:,} clicks, one epoch of "
                f"{res['batches']:,} batches in {res['wall_s']:.1f}s "
                f"({res['clicks'] / res['wall_s']:,.0f} pairs/s incl. the counting pass); "
                f"keys {res['keys'] * 8 / 2**20:.1f} MB; data generation {gen_s:.0f}s",
                flush=True,
            )
            if not args.no_before:
                old = run_child(CHILD, [str(world), "whole"], f"whole-log read, {n:,} rows")
                print(
                    f"{'':>12}  before (whole log read): peak RSS {old['peak_mb']:6.0f} MB",
                    flush=True,
                )
    print_peak_ratio(results, "rows", "rows")


if __name__ == "__main__":
    main()
