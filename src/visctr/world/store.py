"""Reading a world directory written by ``visctr simulate`` (format: docs/world-format.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visctr.errors import InputError
from visctr.io import load_npy

SPLITS = ("train", "test", "random")

ITEM_COLUMNS = {
    "item_id": "int64",
    "category": "int32",
    "image_row": "int64",
    "popularity": "double",
    "train_impressions": "int64",
    "is_head": "bool",
}
QUERY_COLUMNS = {
    "query_id": "int64",
    "user_id": "int64",
    "target_item_id": "int64",
    "timestamp": "int64",
    "split": "string",
    "image_row": "int64",
}
IMPRESSION_COLUMNS = {
    "query_id": "int64",
    "user_id": "int64",
    "item_id": "int64",
    "position": "int32",
    "clicked": "int8",
    "timestamp": "int64",
}


def check_columns(schema, expected: dict[str, str], path: Path) -> None:
    """Raise a clear error when a Parquet schema lacks a column or has the wrong type."""
    for name, typ in expected.items():
        if name not in schema.names:
            raise InputError(f"{path}: missing column {name!r}")
        got = str(schema.field(name).type)
        if got != typ and not (typ == "string" and got == "large_string"):
            raise InputError(f"{path}: column {name!r} has type {got}, expected {typ}")


@dataclass
class World:
    """A simulated (or imported) world on disk; tables are small, images memory-mapped."""

    root: Path
    meta: dict
    items: dict[str, np.ndarray]
    queries: dict[str, np.ndarray]
    users_affinity: np.ndarray  # float32 [n_users, n_categories]
    item_images: np.ndarray  # uint8 [N, C, H, W] (memmap)
    query_images: np.ndarray  # uint8 [Q, C, H, W] (memmap)

    @property
    def category_names(self) -> list[str]:
        return list(self.meta["category_names"])

    @property
    def n_categories(self) -> int:
        return len(self.meta["category_names"])

    def impressions_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.root / "impressions" / f"{split}.parquet"

    def read_impressions(self, split: str) -> dict[str, np.ndarray]:
        """Whole split as numpy columns (small worlds; use streaming readers at scale)."""
        import pyarrow.parquet as pq

        path = self.impressions_path(split)
        if not path.is_file():
            raise InputError(f"{path}: impressions file not found")
        table = pq.read_table(path)
        check_columns(table.schema, IMPRESSION_COLUMNS, path)
        return {c: table.column(c).to_numpy() for c in IMPRESSION_COLUMNS}

    def query_rows(self, split: str) -> np.ndarray:
        """Row indices (into ``queries``) of one query split: train|test|random|retrieval."""
        return np.nonzero(self.queries["split"] == split)[0]

    @classmethod
    def load(cls, root: str | Path) -> World:
        import pyarrow.parquet as pq

        root = Path(root)
        meta_path = root / "world.json"
        if not meta_path.is_file():
            raise InputError(
                f"{root}: not a world directory (no world.json); run "
                "'visctr simulate --out DIR' first"
            )
        meta = json.loads(meta_path.read_text())

        def table(name: str, expected: dict[str, str]) -> dict[str, np.ndarray]:
            path = root / name
            if not path.is_file():
                raise InputError(f"{path}: file not found")
            t = pq.read_table(path)
            check_columns(t.schema, expected, path)
            return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}

        items = table("items.parquet", ITEM_COLUMNS)
        queries = table("queries.parquet", QUERY_COLUMNS)
        queries["split"] = queries["split"].astype(str)
        users_t = pq.read_table(root / "users.parquet")
        aff = np.asarray(users_t.column("affinity").to_pylist(), dtype=np.float32)
        return cls(
            root=root,
            meta=meta,
            items=items,
            queries=queries,
            users_affinity=aff,
            item_images=load_npy(root / "images" / "items.npy"),
            query_images=load_npy(root / "images" / "queries.npy"),
        )
