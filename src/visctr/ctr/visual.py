"""The visual inputs of a CTR model: one encoder's item and query vectors, items aligned to
the world's item rows, and the check that every log row has both vectors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visctr.embeddings import read_embeddings
from visctr.errors import InputError
from visctr.ids import IdIndex
from visctr.world.store import World


@dataclass
class Embeddings:
    """One encoder's item and query vectors (L2-normalised), items aligned to world rows."""

    item_vectors: np.ndarray  # float32 [n_world_items, D]; zero rows where missing
    item_has_vector: np.ndarray  # bool [n_world_items]
    query_ids: IdIndex  # query_id -> row of query_vectors
    query_vectors: np.ndarray  # float32 [n_queries, D]
    items_path: Path
    queries_path: Path

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])


def load_embeddings(directory: Path, world: World, queries: bool = True) -> Embeddings:
    """Read ``items.parquet`` (and ``queries.parquet``) of an embeddings directory."""
    directory = Path(directory)
    items_path, queries_path = directory / "items.parquet", directory / "queries.parquet"
    if not directory.is_dir():
        raise InputError(f"{directory}: embeddings directory not found; run 'visctr embed'")
    item_ids, item_vecs = read_embeddings(items_path, "item_id")
    world_items = np.asarray(world.items["item_id"], dtype=np.int64)
    rows = IdIndex(item_ids).rows(world_items)
    has = rows >= 0
    aligned = np.zeros((world_items.size, item_vecs.shape[1]), dtype=np.float32)
    aligned[has] = item_vecs[rows[has]]
    if queries:
        query_ids, query_vecs = read_embeddings(queries_path, "query_id")
        if query_vecs.shape[1] != item_vecs.shape[1]:
            raise InputError(
                f"{queries_path}: vectors have width {query_vecs.shape[1]} but "
                f"{items_path} has width {item_vecs.shape[1]}; both must come "
                "from the same encoder"
            )
    else:
        query_ids, query_vecs = np.zeros(0, np.int64), np.zeros((0, item_vecs.shape[1]), np.float32)
    return Embeddings(aligned, has, IdIndex(query_ids), query_vecs, items_path, queries_path)


def check_rows(item_rows: np.ndarray, emb: Embeddings, cols: dict, log_path: Path) -> np.ndarray:
    """Raise when a log row names an unknown item or lacks an item/query vector; returns
    the rows of the log's queries in ``emb.query_vectors``."""
    if (item_rows < 0).any():
        bad = cols["item_id"][np.flatnonzero(item_rows < 0)[0]]
        raise InputError(f"{log_path}: item_id {bad} is not in the world catalog (items.parquet)")
    missing = ~emb.item_has_vector[item_rows]
    if missing.any():
        bad = cols["item_id"][np.flatnonzero(missing)[0]]
        raise InputError(
            f"{emb.items_path}: no vector for item_id {bad}, which appears in "
            f"{log_path} ({int(missing.sum())} rows); re-run 'visctr embed'"
        )
    q = emb.query_ids.rows(cols["query_id"])
    if (q < 0).any():
        bad = cols["query_id"][np.flatnonzero(q < 0)[0]]
        raise InputError(
            f"{emb.queries_path}: no vector for query_id {bad}, which appears in "
            f"{log_path}; re-run 'visctr embed'"
        )
    return q
