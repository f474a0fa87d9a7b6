"""Write a simulated world out as a shop's raw files, the input of ``visctr import``.

PNG images in folders (or JPEG), CSV files, string SKUs (``sku-000123``), string query and
user ids, ISO-8601 timestamps from 2026-01-01 (a whole number of weeks after the Unix
epoch, so hour-of-day and day-of-week are the simulated ones). Category names are
prefixed with their code (``0-T-shirt``) so that sorted names keep the simulator's codes.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from visctr.world import World

BASE = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def iso(ts: int) -> str:
    return datetime.fromtimestamp(BASE + int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _save(img: np.ndarray, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_raw(world_dir: Path, out: Path, query_format: str = "PNG") -> dict[str, Path]:
    """The files ``visctr import`` reads, made from ``world_dir``; returns their paths and
    ``split_time`` (the simulator's train/test boundary, ISO)."""
    w = World.load(world_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = w.category_names
    item_key = {int(i): f"sku-{int(i):06d}" for i in w.items["item_id"]}
    with open(out / "catalog.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["item_id", "image_path", "category"])
        for i, c, r in zip(
            w.items["item_id"], w.items["category"], w.items["image_row"], strict=True
        ):
            rel = f"images/{int(c)}/{item_key[int(i)]}.png"
            _save(w.item_images[r], out / rel, "PNG")
            wr.writerow([item_key[int(i)], rel, f"{int(c)}-{names[int(c)]}"])
    q = w.queries
    ext = "png" if query_format == "PNG" else "jpg"
    with (
        open(out / "queries.csv", "w", newline="") as fq,
        open(out / "retrieval.csv", "w", newline="") as fr,
    ):
        wq, wr = csv.writer(fq), csv.writer(fr)
        wq.writerow(["query_id", "image_path", "user_id", "timestamp"])
        wr.writerow(["query_id", "image_path", "item_id"])
        for row in range(len(q["query_id"])):
            key = f"q-{int(q['query_id'][row]):06d}"
            rel = f"queries/{key}.{ext}"
            _save(w.query_images[q["image_row"][row]], out / rel, query_format)
            if q["split"][row] == "retrieval":
                wr.writerow([key, rel, item_key[int(q["target_item_id"][row])]])
            else:
                wq.writerow(
                    [key, rel, f"user-{int(q['user_id'][row]):05d}", iso(q["timestamp"][row])]
                )
    for name, splits in (("impressions.csv", ("train", "test")), ("random.csv", ("random",))):
        with open(out / name, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["query_id", "item_id", "position", "clicked"])
            for s in splits:
                t = pq.read_table(w.impressions_path(s)).to_pydict()
                for qid, iid, pos, clk in zip(
                    t["query_id"], t["item_id"], t["position"], t["clicked"], strict=True
                ):
                    wr.writerow([f"q-{qid:06d}", item_key[iid], pos, clk])
    cfg = w.meta["config"]
    split_t = int(cfg["train_share"] * cfg["days"] * 86400)
    return {
        "catalog": out / "catalog.csv",
        "queries": out / "queries.csv",
        "impressions": out / "impressions.csv",
        "random": out / "random.csv",
        "retrieval": out / "retrieval.csv",
        "split_time": iso(split_t),
    }  # fmt: skip
