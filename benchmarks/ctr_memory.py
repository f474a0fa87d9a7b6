"""Peak RSS of CTR training on a 1M- vs 10M-row synthetic impressions log.

The logs are streamed (Parquet record batches -> shuffle buffer -> index tensors), so peak
memory should not grow with the number of impressions. Each size trains one epoch of
``train_ctr`` in a fresh subprocess over the same synthetic world (6k items, 2k users,
100k queries; only the impressions log differs) and reports its own ``ru_maxrss``.
Validation keeps its predictions for an exact AUC, so it is capped (``--max-val-rows``,
default = ``CTRConfig.max_validation_rows``); below the cap it grows with the log.
Besides peak RSS it prints the Arrow memory pool's peak and, with ``--trace``, the peak of
Python/numpy allocations (tracemalloc): those are what the code holds, while RSS also
carries allocator retention, which moves by tens of MB between identical runs.

    python benchmarks/ctr_memory.py [--rows 1000000 10000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _child import print_peak_ratio, run_child

N_ITEMS, N_USERS, N_QUERIES, N_CAT, DIM = 6000, 2000, 100_000, 10, 64
ROW_GROUP = 1_000_000


def build_world(root: Path, n_rows: int, seed: int = 0) -> tuple[Path, Path]:
    """A minimal world (docs/world-format.md) + embeddings; impressions written in chunks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visctr.embeddings import write_embeddings

    rng = np.random.default_rng(seed)
    world = root / "world"
    (world / "images").mkdir(parents=True)
    (world / "impressions").mkdir()
    (world / "world.json").write_text(
        json.dumps({"category_names": [f"c{i}" for i in range(N_CAT)], "image_shape": [1, 1, 1]})
    )
    np.save(world / "images" / "items.npy", np.zeros((N_ITEMS, 1, 1, 1), np.uint8))
    np.save(world / "images" / "queries.npy", np.zeros((N_QUERIES, 1, 1, 1), np.uint8))
    cat = (np.arange(N_ITEMS) % N_CAT).astype(np.int32)
    pq.write_table(pa.table({
        "item_id": np.arange(N_ITEMS, dtype=np.int64), "category": cat,
        "image_row": np.arange(N_ITEMS, dtype=np.int64),
        "popularity": np.full(N_ITEMS, 1.0 / N_ITEMS), "train_impressions": np.zeros(N_ITEMS, np.int64),
        "is_head": np.arange(N_ITEMS) < N_ITEMS // 5}), world / "items.parquet")  # fmt: skip
    aff = rng.dirichlet(np.ones(N_CAT), N_USERS).astype(np.float32)
    pq.write_table(pa.table({
        "user_id": np.arange(N_USERS, dtype=np.int64),
        "affinity": pa.array(list(aff), pa.list_(pa.float32()))}), world / "users.parquet")  # fmt: skip
    q_user = rng.integers(0, N_USERS, N_QUERIES)
    q_target = rng.integers(0, N_ITEMS, N_QUERIES)
    split = np.where(np.arange(N_QUERIES) < N_QUERIES * 0.9, "train", "test")
    pq.write_table(pa.table({
        "query_id": np.arange(N_QUERIES, dtype=np.int64), "user_id": q_user,
        "target_item_id": q_target, "timestamp": np.zeros(N_QUERIES, np.int64),
        "split": split, "image_row": np.arange(N_QUERIES, dtype=np.int64)}),
        world / "queries.parquet")  # fmt: skip
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[q_target] + rng.normal(scale=0.5 / DIM**0.5, size=(N_QUERIES, DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    emb = root / "emb"
    write_embeddings(np.arange(N_ITEMS), items, emb / "items.parquet", "item_id")
    write_embeddings(np.arange(N_QUERIES), queries, emb / "queries.parquet", "query_id")

    schema = pa.schema([("query_id", pa.int64()), ("user_id", pa.int64()),
                        ("item_id", pa.int64()), ("position", pa.int32()),
                        ("clicked", pa.int8()), ("timestamp", pa.int64())])  # fmt: skip

    def chunk(n: int, t0: int, t1: int) -> pa.Table:
        q = rng.integers(0, N_QUERIES, n)
        item = np.where(rng.random(n) < 0.3, q_target[q], rng.integers(0, N_ITEMS, n))
        sim = (items[item] * queries[q]).sum(1)
        p = 0.02 + 0.3 * (sim > 0.6)
        return pa.table({
            "query_id": q, "user_id": q_user[q], "item_id": item,
            "position": rng.integers(0, 10, n).astype(np.int32),
            "clicked": (rng.random(n) < p).astype(np.int8),
            "timestamp": np.sort(rng.integers(t0, t1, n))}, schema=schema)  # fmt: skip

    span = 30 * 86400
    with pq.ParquetWriter(world / "impressions" / "train.parquet", schema) as w:
        for s in range(0, n_rows, ROW_GROUP):
            n = min(ROW_GROUP, n_rows - s)
            t0 = int(span * s / n_rows)
            w.write_table(chunk(n, t0, int(span * (s + n) / n_rows) + 1), row_group_size=ROW_GROUP)
    for name in ("test", "random"):
        pq.write_table(chunk(10_000, span, span + 86400), world / "impressions" / f"{name}.parquet")
    return world, emb


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))
from visctr.ctr import CTRConfig, train_ctr
from visctr.train import TrainerConfig
from visctr.world import World
import pyarrow as pa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
trace = sys.argv[6] == "1"
if trace:
    import tracemalloc
    tracemalloc.start(1)
world = World.load(sys.argv[1])
cfg = CTRConfig(max_epochs=1, max_validation_rows=int(sys.argv[5]),
                trainer=TrainerConfig(accelerator="cpu", progress_bar=False))
t0 = time.perf_counter()
out = train_ctr(world, Path(sys.argv[2]), Path(sys.argv[3]), cfg, seed=0)
wall = time.perf_counter() - t0
done = json.loads((out / "stage.json").read_text())["summary"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "wall_s": wall,
                  "fit_rows": done["train_impressions"], "val_rows": done["val_impressions"],
                  "val_auc": done["best_val_auc"],
                  "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
                  "traced_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20 if trace else None}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--max-val-rows",
        type=int,
        default=500_000,
        help="validation rows scored per epoch (exact AUC keeps their predictions)",
    )
    ap.add_argument(
        "--trace",
        action="store_true",
        help="also report the peak of Python/numpy allocations (tracemalloc; slows training)",
    )
    args = ap.parse_args()
    results = []
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            world, emb = build_world(Path(tmp), n)
            gen_s = time.perf_counter() - t0
            argv = [str(world), str(emb), str(Path(tmp) / "model"), str(args.threads),
                    str(args.max_val_rows), str(int(args.trace))]  # fmt: skip
            res = run_child(CHILD, argv, f"training on {n:,} rows")
            res["rows"] = n
            results.append(res)
            print(
                f"{n:>12,} rows: peak RSS {res['peak_mb']:7.0f} MB (after imports "
                f"{res['base_mb']:.0f} MB), train {res['wall_s']:.0f}s "
                f"({res['fit_rows'] / res['wall_s']:,.0f} rows/s incl. validation), "
                f"val AUC {res['val_auc']:.3f}, data generation {gen_s:.0f}s; Arrow pool peak "
                f"{res['arrow_peak_mb']:.0f} MB"
                + (f", numpy/Python peak {res['traced_peak_mb']:.0f} MB" if args.trace else ""),
                flush=True,
            )
    print_peak_ratio(results, "rows", "rows")


if __name__ == "__main__":
    main()
