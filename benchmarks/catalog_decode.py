"""Catalog decoding: JPEG images/s of visctr's reader against a bare parallel PIL loop,
and its peak memory for 10k vs 40k images at 224 px RGB.

visctr: ``read_images`` (chunks of 256 images decoded by a spawn pool of ``--workers``
processes, written in order into a ``.npy`` store on disk, checked as it goes). Bare: the
same pool over the same chunks, each image ``PIL.open + draft + convert + resize``
into a uint8 array sent back to the parent and dropped. Both read the same files
(product-photo-sized JPEGs, ``--source-px`` square, a few distinct photos shared by many
rows so that generating the files does not dominate) and alternate for ``--rounds``.

Peak RSS: ``load_catalog`` of a manifest of N rows into the world's image store, in a
fresh process per size; the parent's peak and the largest worker's. ``--simulate`` adds
the peak of ``visctr simulate`` on the same manifests (a world of 2,000 logged queries
over the N photos: the catalog decoded into the store, appeal, thumbnails, the click
model's likeness and the query photos, all read a chunk at a time from the store).

    python benchmarks/catalog_decode.py [--images 4000] [--sizes 10000 40000] [--workers 2]
        [--simulate] [--no-throughput]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _child import print_peak_ratio, run_child

DISTINCT = 64


def build_photos(root: Path, px: int, seed: int = 0) -> list[Path]:
    """``DISTINCT`` RGB JPEGs of ``px`` x ``px``: smooth colour fields with edges (a photo
    compresses and decodes like this, unlike white noise)."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(DISTINCT):
        small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((px, px), Image.BICUBIC).filter(ImageFilter.DETAIL)
        p = root / f"p{i}.jpg"
        im.save(p, quality=90)
        paths.append(p)
    return paths


def _bare_chunk(task):
    from PIL import Image

    paths, size = task
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            im.draft("RGB", (size, size))
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(im).transpose(2, 0, 1)
    return out


def bare(paths: list[Path], size: int, workers: int, chunk: int) -> float:
    import multiprocessing

    tasks = [(paths[s : s + chunk], size) for s in range(0, len(paths), chunk)]
    t = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap(_bare_chunk, tasks):
            pass
    return len(paths) / (time.perf_counter() - t)


def visctr(paths: list[Path], size: int, workers: int, out: Path) -> float:
    import visctr.data.catalog as cat

    cfg = cat.CatalogConfig(image_size=size, channels=3)
    wheres = [str(p) for p in paths]
    t = time.perf_counter()
    old = cat.POOL_MIN_IMAGES
    cat.POOL_MIN_IMAGES = 1  # the pool even for a small benchmark set, as bare has
    try:
        cat.read_images(paths, cfg, wheres, out=out, workers=workers)
    finally:
        cat.POOL_MIN_IMAGES = old
    rate = len(paths) / (time.perf_counter() - t)
    out.unlink()
    return rate


PEAK = """
import json, resource, sys, time
from pathlib import Path
from visctr.data.catalog import CatalogConfig, load_catalog
manifest, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
t = time.perf_counter()
cat = load_catalog(CatalogConfig(source=str(manifest), image_size=224, channels=3),
                   images_out=out, workers=workers)
seconds = time.perf_counter() - t
n = len(cat)
del cat
out.unlink()
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"images": n, "peak_mb": me, "worker_peak_mb": kids, "seconds": seconds}))
"""


SIMULATE = """
import json, resource, sys, time
from pathlib import Path
from visctr.data.catalog import CatalogConfig
from visctr.world.simulate import SimConfig, simulate
manifest, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = SimConfig(n_users=200, n_queries=2000, n_random_queries=500, n_retrieval_queries=200)
cfg.catalog = CatalogConfig(source=str(manifest), image_size=224, channels=3)
t = time.perf_counter()
summary = simulate(cfg, 0, out)
seconds = time.perf_counter() - t
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"images": summary["items"], "peak_mb": me, "worker_peak_mb": kids,
                  "seconds": seconds}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4000, help="images per throughput round")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--source-px", type=int, default=800)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--simulate", action="store_true", help="also visctr simulate's peak")
    ap.add_argument("--no-throughput", action="store_true", help="peak memory only")
    args = ap.parse_args()
    from visctr.data.catalog import DECODE_CHUNK

    tmp = Path(tempfile.mkdtemp(prefix="visctr-decode-bench-"))
    photos = build_photos(tmp / "img", args.source_px)
    paths = [photos[i % DISTINCT] for i in range(args.images)]
    if not args.no_throughput:
        rates: dict[str, list[float]] = {"visctr": [], "bare": []}
        for _ in range(args.rounds):
            rates["bare"].append(bare(paths, args.size, args.workers, DECODE_CHUNK))
            rates["visctr"].append(visctr(paths, args.size, args.workers, tmp / "store.npy"))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(
            f"{args.images:,} JPEGs of {args.source_px}px -> {args.size}px RGB, "
            f"{args.workers} worker processes, median of {args.rounds}"
        )
        for k, v in med.items():
            print(f"  {k:7s} {v:8.0f} images/s")
        print(f"visctr / bare {med['visctr'] / med['bare']:.2f}x")

    results = []
    for n in args.sizes:
        manifest = tmp / f"manifest_{n}.csv"
        rows = [f"sku-{i},img/p{i % DISTINCT}.jpg,c{i % 10}" for i in range(n)]
        manifest.write_text("item_id,image_path,category\n" + "\n".join(rows) + "\n")
        r = run_child(
            PEAK, [str(manifest), str(tmp / "items.npy"), str(args.workers)], f"{n} images"
        )
        gb = n * 3 * 224 * 224 / 1e9
        print(
            f"{n:>7,} images ({gb:.1f} GB decoded): peak RSS {r['peak_mb']:.0f} MB, largest "
            f"worker {r['worker_peak_mb']:.0f} MB, {r['seconds']:.0f}s"
        )
        results.append(r)
    print_peak_ratio(results, "images", "images")
    if not args.simulate:
        return
    results = []
    for n in args.sizes:
        out = tmp / f"world_{n}"
        r = run_child(SIMULATE, [str(tmp / f"manifest_{n}.csv"), str(out)], f"simulate {n}")
        print(
            f"simulate {n:>7,} photos: peak RSS {r['peak_mb']:.0f} MB, largest decode "
            f"worker {r['worker_peak_mb']:.0f} MB, {r['seconds']:.0f}s"
        )
        shutil.rmtree(out)
        results.append(r)
    print_peak_ratio(results, "images", "photos (visctr simulate)")


if __name__ == "__main__":
    main()
