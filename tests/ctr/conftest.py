"""CTR fixtures: synthetic embeddings (method + S1 reference) for the tiny simulated world.

The world comes from ``tests/conftest.py::tiny_world_dir`` (the real simulator over a
synthetic catalog). Item vectors carry the category and an item-specific direction;
query vectors are their target item's vector plus noise, so cosine similarity is
informative, as with a trained encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visctr.embeddings import write_embeddings
from visctr.world import World

DIM = 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_embeddings(world: World, out: Path, seed: int, noise: float = 0.5) -> Path:
    """Write ``items.parquet`` + ``queries.parquet`` for every item and query of ``world``."""
    rng = np.random.default_rng(seed)
    n_cat = world.n_categories
    cat_dirs = rng.normal(size=(n_cat, DIM))
    items = _unit(
        cat_dirs[world.items["category"]]
        + 0.7 * rng.normal(size=(len(world.items["item_id"]), DIM))
    )
    ids = world.items["item_id"]
    sorter = np.argsort(ids)
    target_rows = sorter[np.searchsorted(ids, world.queries["target_item_id"], sorter=sorter)]
    queries = _unit(items[target_rows] + noise * rng.normal(size=(len(target_rows), DIM)))
    out.mkdir(parents=True, exist_ok=True)
    write_embeddings(ids, items, out / "items.parquet", "item_id")
    write_embeddings(world.queries["query_id"], queries, out / "queries.parquet", "query_id")
    return out


@pytest.fixture(scope="session")
def tiny_world(tiny_world_dir: Path) -> World:
    return World.load(tiny_world_dir)


@pytest.fixture(scope="session")
def tiny_embeddings(tiny_world: World, tmp_path_factory) -> Path:
    return make_embeddings(tiny_world, tmp_path_factory.mktemp("emb") / "method", seed=1)


@pytest.fixture(scope="session")
def tiny_reference(tiny_world: World, tmp_path_factory) -> Path:
    return make_embeddings(tiny_world, tmp_path_factory.mktemp("emb") / "s1", seed=2)
