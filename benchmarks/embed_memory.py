"""Peak RSS of ``visctr embed`` on a 10k- vs a 60k-item catalog.

The image store is a memory-mapped ``.npy`` read batch by batch and vectors are written to
Parquet in chunks, so peak memory should not grow in proportion to the catalog. Each size
runs in a fresh subprocess over a synthetic world of 28x28 grey images (random pixels,
2,000 query photos; only the catalog size differs) and reports its own ``ru_maxrss``.

    python benchmarks/embed_memory.py [--items 10000 60000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from _child import print_peak_ratio, run_child

N_QUERIES, N_CAT, SIZE = 2000, 10, 28


def build_world(root: Path, n_items: int, seed: int = 0) -> Path:
    """A minimal world (docs/world-format.md): tables, memory-mappable image stores."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    world = root / "world"
    (world / "images").mkdir(parents=True)
    (world / "impressions").mkdir()
    (world / "world.json").write_text(
        json.dumps({"category_names": [f"c{i}" for i in range(N_CAT)],
                    "image_shape": [1, SIZE, SIZE]})
    )  # fmt: skip
    # written in chunks through a memmap so the generator itself stays small
    store = np.lib.format.open_memmap(
        world / "images" / "items.npy", "w+", np.uint8, (n_items, 1, SIZE, SIZE)
    )
    for s in range(0, n_items, 5000):
        e = min(s + 5000, n_items)
        store[s:e] = rng.integers(0, 256, (e - s, 1, SIZE, SIZE), dtype=np.uint8)
    store.flush()
    del store
    np.save(world / "images" / "queries.npy",
            rng.integers(0, 256, (N_QUERIES, 1, SIZE, SIZE), dtype=np.uint8))  # fmt: skip
    pq.write_table(pa.table({
        "item_id": np.arange(n_items, dtype=np.int64),
        "category": (np.arange(n_items) % N_CAT).astype(np.int32),
        "image_row": np.arange(n_items, dtype=np.int64),
        "popularity": np.full(n_items, 1.0 / n_items),
        "train_impressions": np.zeros(n_items, np.int64),
        "is_head": np.arange(n_items) < n_items // 5}), world / "items.parquet")  # fmt: skip
    pq.write_table(pa.table({
        "user_id": np.arange(10, dtype=np.int64),
        "affinity": pa.array([[0.1] * N_CAT] * 10, pa.list_(pa.float32()))}),
        world / "users.parquet")  # fmt: skip
    pq.write_table(pa.table({
        "query_id": np.arange(N_QUERIES, dtype=np.int64),
        "user_id": np.zeros(N_QUERIES, np.int64),
        "target_item_id": np.arange(N_QUERIES, dtype=np.int64) % n_items,
        "timestamp": np.zeros(N_QUERIES, np.int64), "split": ["retrieval"] * N_QUERIES,
        "image_row": np.arange(N_QUERIES, dtype=np.int64)}), world / "queries.parquet")  # fmt: skip
    return world


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[3]))
from visctr.encoders import EncoderConfig, build_encoder, embed
from visctr.encoders.checkpoint import encoder_spec, save_encoder
from visctr.world import World
torch.manual_seed(0)
cfg = EncoderConfig()
enc = build_encoder(cfg, 1, 28)
out = Path(sys.argv[2])
save_encoder(out / "encoder.pt", enc, encoder_spec(enc, cfg, 1, 28))
del enc
world = World.load(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
embed(out / "encoder.pt", world, out / "emb", device="cpu")
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "wall_s": wall}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 60_000])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results = []
    for n in args.items:
        with tempfile.TemporaryDirectory() as tmp:
            world = build_world(Path(tmp), n)
            res = run_child(CHILD, [str(world), tmp, str(args.threads)], f"embed on {n:,} items")
            res["items"] = n
            results.append(res)
            images_mb = n * SIZE * SIZE / 2**20
            print(
                f"{n:>8,} items: peak RSS {res['peak_mb']:6.0f} MB (after imports and "
                f"World.load {res['base_mb']:.0f} MB), image store {images_mb:.0f} MB, "
                f"embed {res['wall_s']:.1f}s ({(n + N_QUERIES) / res['wall_s']:,.0f} images/s)",
                flush=True,
            )
    print_peak_ratio(results, "items", "items")


if __name__ == "__main__":
    main()
