"""Shared fixtures: a tiny simulated world over a synthetic catalog (no dataset needed), and
synthetic embeddings for it (a method's and an S1 reference) for the CTR and eval tests.

Item vectors carry the category and an item-specific direction; query vectors are their
target item's vector plus noise, so cosine similarity is informative, as with a trained
encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visctr.data.catalog import Catalog
from visctr.embeddings import write_embeddings
from visctr.ids import IdIndex
from visctr.world import World
from visctr.world.simulate import SimConfig, simulate_arrays, write_world


def synthetic_catalog(n: int = 300, n_cat: int = 5, seed: int = 0) -> Catalog:
    """Blobs whose shape depends on the category and whose details on the item."""
    rng = np.random.default_rng(seed)
    cats = (np.arange(n) % n_cat).astype(np.int32)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 1, 28, 28), np.uint8)
    for i in range(n):
        c = cats[i]
        cy, cx = 14 + rng.integers(-3, 4), 14 + rng.integers(-3, 4)
        r = 5 + c + rng.integers(0, 3)
        blob = ((yy - cy) ** 2 / (1 + c % 3) + (xx - cx) ** 2) < r**2
        images[i, 0] = np.where(blob, 120 + rng.integers(0, 130), 0)
        images[i, 0, rng.integers(0, 28), :] //= 2
    return Catalog(
        np.arange(n, dtype=np.int64), images, cats, [f"c{i}" for i in range(n_cat)], "synthetic"
    )


def tiny_sim_config() -> SimConfig:
    return SimConfig(n_users=40, n_queries=800, n_random_queries=150, n_retrieval_queries=120)


@pytest.fixture(scope="session")
def tiny_world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    cfg = tiny_sim_config()
    write_world(simulate_arrays(cfg, 0, synthetic_catalog()), cfg, 0, out)
    return out


@pytest.fixture(scope="session")
def fmnist_tiny_world_dir(tmp_path_factory) -> Path:
    """The real ``tiny`` preset over Fashion-MNIST (installed by ``make test``)."""
    from visctr.errors import InputError
    from visctr.world.presets import resolve_world_config
    from visctr.world.simulate import simulate

    out = tmp_path_factory.mktemp("fmnist") / "w"
    try:
        simulate(resolve_world_config("tiny"), 0, out)
    except InputError as e:
        pytest.skip(f"Fashion-MNIST not available: {e}")
    return out


@pytest.fixture(scope="session")
def visctr_ddp():
    """Run ``visctr VERB ARGS`` with 2 CPU processes under Lightning DDP (gloo); the
    completed process, after checking it exited 0."""
    import os
    import subprocess
    import sys

    def run(verb: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "visctr.cli", verb, *args, "--accelerator", "cpu",
               "--devices", "2", "--strategy", "ddp"]  # fmt: skip
        env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, res.stderr[-3000:]
        return res

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``visctr run --preset tiny --seeds 1`` over Fashion-MNIST: ``(run dir, output)``."""
    from click.testing import CliRunner

    from visctr.cli import main
    from visctr.data.catalog import find_fashion_mnist_dir
    from visctr.errors import InputError

    try:
        find_fashion_mnist_dir(None)
    except InputError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("run") / "tiny"
    res = CliRunner().invoke(main, ["run", "--preset", "tiny", "--seeds", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, res.output


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
    target_rows = IdIndex(ids).rows(world.queries["target_item_id"], strict=True)
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
