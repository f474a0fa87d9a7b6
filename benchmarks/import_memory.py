"""Peak RSS of ``visctr import`` on a 1M- vs 10M-row impressions CSV.

The importer streams the logs (CSV record batches -> id lookup -> Parquet writers), so peak
memory should not grow with the number of impressions; it holds the catalog and the query
table (one row per query), which are the same for every size here. Each size imports a
synthetic shop (2k items, 20k queries with string ids, ISO timestamps; only the
impressions log differs) in a fresh subprocess and reports that process's ``ru_maxrss``.

    python benchmarks/import_memory.py [--rows 1000000 10000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _child import print_peak_ratio, run_child

N_ITEMS, N_QUERIES, N_USERS, N_IMAGES = 2_000, 20_000, 5_000, 16
CHUNK = 1_000_000


def build_shop(root: Path, n_rows: int, seed: int = 0) -> dict[str, Path]:
    """Catalog, queries and an ``n_rows`` impressions CSV (written in chunks)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    for i in range(N_IMAGES):  # a few distinct photos, shared by many rows
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / f"img/{i}.png")
    items = [f"sku-{i:05d}" for i in range(N_ITEMS)]
    pacsv.write_csv(pa.table({
        "item_id": items,
        "image_path": [f"img/{i % N_IMAGES}.png" for i in range(N_ITEMS)],
        "category": [f"c{i % 10}" for i in range(N_ITEMS)]}), root / "catalog.csv")  # fmt: skip
    ts = np.sort(rng.integers(0, 30 * 86_400, N_QUERIES)) + 1_767_225_600
    iso = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
    pacsv.write_csv(pa.table({
        "query_id": [f"q-{i:07d}" for i in range(N_QUERIES)],
        "image_path": [f"img/{i % N_IMAGES}.png" for i in range(N_QUERIES)],
        "user_id": [f"u-{u}" for u in rng.integers(0, N_USERS, N_QUERIES)],
        "timestamp": [f"{t}Z" for t in iso]}), root / "queries.csv")  # fmt: skip
    qkeys = np.asarray([f"q-{i:07d}" for i in range(N_QUERIES)], dtype=object)
    ikeys = np.asarray(items, dtype=object)
    per_query = max(1, n_rows // N_QUERIES)
    with pacsv.CSVWriter(root / "impressions.csv", pa.schema([
        ("query_id", pa.string()), ("item_id", pa.string()),
        ("position", pa.int32()), ("clicked", pa.int8())])) as w:  # fmt: skip
        for start in range(0, n_rows, CHUNK):
            n = min(CHUNK, n_rows - start)
            rows = np.arange(start, start + n)
            w.write_table(pa.table({
                "query_id": pa.array(qkeys[(rows // per_query) % N_QUERIES], pa.string()),
                # distinct items within a query (duplicates are refused at import)
                "item_id": pa.array(ikeys[(rows // per_query * 7919 + rows % per_query)
                                          % N_ITEMS], pa.string()),
                "position": pa.array(rows % per_query, pa.int32()),
                "clicked": pa.array(rng.random(n) < 0.05, pa.int8())}))  # fmt: skip
    return {k: root / f"{k}.csv" for k in ("catalog", "queries", "impressions")}


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from visctr.world.importer import import_world
import pyarrow as pa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
s = import_world(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),
                 echo=lambda *a: None)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "wall_s": wall,
                  "train": s["impressions"]["train"], "test": s["impressions"]["test"],
                  "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = ap.parse_args()
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            files = build_shop(Path(tmp) / "shop", n)
            gen_s = time.perf_counter() - t0
            mb = files["impressions"].stat().st_size / 2**20
            argv = [str(files[k]) for k in ("catalog", "queries", "impressions")]
            res = run_child(CHILD, [*argv, str(Path(tmp) / "world")], f"importing {n:,} rows")
            res["rows"] = n
            results.append(res)
            print(
                f"{n:>12,} rows ({mb:.0f} MB CSV): peak RSS {res['peak_mb']:6.0f} MB (after "
                f"imports {res['base_mb']:.0f} MB), import {res['wall_s']:.0f}s "
                f"({n / res['wall_s']:,.0f} rows/s; train {res['train']:,} / test "
                f"{res['test']:,}); Arrow pool peak {res['arrow_peak_mb']:.0f} MB; data "
                f"generation {gen_s:.0f}s",
                flush=True,
            )
    print_peak_ratio(results, "rows", "rows")


if __name__ == "__main__":
    main()
