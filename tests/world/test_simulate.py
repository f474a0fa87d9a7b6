import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from visctr.world import World
from visctr.world.head_tail import head_mask
from visctr.world.simulate import (
    click_probability,
    sample_targets,
    simulate_arrays,
    write_world,
    zipf_popularity,
)

from ..conftest import synthetic_catalog, tiny_sim_config


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            if p.name == "world.json":
                meta = json.loads(p.read_text())
                meta["summary"].pop("seconds")
                h.update(json.dumps(meta, sort_keys=True).encode())
            elif p.name == "digest.json":
                continue  # a hash of the files above (world.json's build seconds included)
            else:
                h.update(p.read_bytes())
    return h.hexdigest()


def _write(tmp_path: Path, seed: int, name: str) -> Path:
    cfg = tiny_sim_config()
    out = tmp_path / name
    write_world(simulate_arrays(cfg, seed, synthetic_catalog()), cfg, seed, out)
    return out


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a, b, c = _write(tmp_path, 3, "a"), _write(tmp_path, 3, "b"), _write(tmp_path, 4, "c")
    assert _tree_hash(a) == _tree_hash(b)
    assert _tree_hash(a) != _tree_hash(c)


def test_world_loads_with_documented_schema(tiny_world_dir):
    w = World.load(tiny_world_dir)
    n = len(w.items["item_id"])
    assert w.item_images.shape == (n, 1, 28, 28)
    assert w.query_images.shape[0] == len(w.queries["query_id"])
    assert set(np.unique(w.queries["split"])) == {"train", "test", "random", "retrieval"}
    train = w.read_impressions("train")
    test = w.read_impressions("test")
    assert train["timestamp"].max() <= test["timestamp"].min()  # time split
    assert set(np.unique(train["position"])) == set(range(10))
    assert np.isin(train["item_id"], w.items["item_id"]).all()
    assert w.users_affinity.shape[1] == w.n_categories
    np.testing.assert_allclose(w.users_affinity.sum(1), 1, rtol=1e-4)


def test_logs_are_biased_and_random_exposure_is_uniform(fmnist_tiny_world_dir):
    """Default settings on the real tiny preset: the logs leave much of the catalog unseen."""
    w = World.load(fmnist_tiny_world_dir)
    ids = w.items["item_id"]
    n = len(ids)
    train = w.read_impressions("train")
    shown = np.bincount(np.searchsorted(ids, train["item_id"]), minlength=n)
    never_logged = (shown == 0).mean()
    assert never_logged > 0.1  # many items never shown by the logging policy
    rnd = w.read_impressions("random")
    counts = np.bincount(np.searchsorted(ids, rnd["item_id"]), minlength=n)
    # uniform exposure: a chi-square test against equal counts does not reject
    expected = len(rnd["item_id"]) / n
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < n + 4 * np.sqrt(2 * n)
    # and the head is concentrated in the logs but not in the random set
    top = np.argsort(-shown)[: n // 5]
    assert shown[top].sum() / shown.sum() > 0.6
    assert counts[top].sum() / counts.sum() < 0.35
    assert (counts == 0).mean() < never_logged / 10


def test_head_mask_excludes_never_shown():
    counts = np.array([5, 0, 0, 3, 0, 0, 0, 0, 0, 0])
    head = head_mask(counts, 0.3)
    assert head.tolist() == [True, False, False, True] + [False] * 6


def test_zipf_popularity_sums_to_one_and_is_skewed():
    p = zipf_popularity(1000, 1.1, np.random.default_rng(0))
    assert np.isclose(p.sum(), 1)
    assert np.sort(p)[-100:].sum() > 0.5


def test_sample_targets_follows_popularity_times_affinity():
    rng = np.random.default_rng(0)
    cats = np.array([0, 0, 1, 1])
    pop = np.array([0.4, 0.1, 0.25, 0.25])
    aff = np.array([[0.8, 0.2]])
    t = sample_targets(np.zeros(200_000, int), aff, cats, pop, rng)
    freq = np.bincount(t, minlength=4) / len(t)
    expected = pop * aff[0][cats]
    np.testing.assert_allclose(freq, expected / expected.sum(), atol=0.01)


def test_click_probability_orders_exact_category_other():
    from visctr.world.simulate import ClickModelConfig

    cats = np.array([0, 0, 1])
    aff = np.full((1, 2), 0.5, np.float32)
    p = click_probability(
        np.array([[0, 1, 2]]),
        np.array([[0, 0, 0]]),
        np.array([0]),
        aff,
        cats,
        np.array([[1.0, 0.5, 0.0]]),
        ClickModelConfig(),
    )
    assert p[0, 0] > p[0, 1] > p[0, 2] > 0
    lower = click_probability(
        np.array([[0]]),
        np.array([[5]]),
        np.array([0]),
        aff,
        cats,
        np.ones((1, 1)),
        ClickModelConfig(),
    )
    assert lower[0, 0] < p[0, 0]  # position bias


def test_impressions_parquet_types(tiny_world_dir):
    schema = pq.read_schema(tiny_world_dir / "impressions" / "train.parquet")
    assert str(schema.field("position").type) == "int32"
    assert str(schema.field("clicked").type) == "int8"


def test_too_small_catalog_is_a_clear_error():
    from visctr.errors import InputError

    cat = synthetic_catalog(n=5)
    with pytest.raises(InputError, match="fewer than top_k"):
        simulate_arrays(tiny_sim_config(), 0, cat)


def test_no_progress_bar_redraws_when_not_on_a_terminal(capsys):
    """Bars that would show for this many chunks stay off when stderr is not a terminal
    (a log file or CI): no carriage-return redraws."""
    cfg = tiny_sim_config()
    cfg.chunk_size = 64  # enough chunks that a terminal would get the bars
    simulate_arrays(cfg, 0, synthetic_catalog())
    err = capsys.readouterr().err
    assert "\r" not in err and "logging policy" not in err


class _ChunkGuard:
    """An image store that fails any read of more than ``limit`` images at once (what a
    memory-mapped 224-px catalog must never see: a read of the whole of it)."""

    def __init__(self, images: np.ndarray, limit: int):
        self.images, self.limit = images, limit
        self.shape, self.dtype = images.shape, images.dtype

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        out = self.images[idx]
        assert len(out) <= self.limit, f"{len(out)} images read at once (limit {self.limit})"
        return out


def test_the_simulator_reads_the_catalog_a_chunk_at_a_time():
    cfg = tiny_sim_config()
    cfg.chunk_size = 64
    cat = synthetic_catalog()
    want = simulate_arrays(cfg, 0, synthetic_catalog())
    cat.images = _ChunkGuard(cat.images, 64)
    got = simulate_arrays(cfg, 0, cat)
    np.testing.assert_array_equal(got.query_images, want.query_images)
    np.testing.assert_array_equal(got.appeal, want.appeal)
    for split in want.impressions:
        for col, v in want.impressions[split].items():
            np.testing.assert_array_equal(got.impressions[split][col], v, err_msg=col)


def test_pixel_and_thumbnail_features_do_not_depend_on_the_chunk():
    from visctr.world.simulate import PIXEL_SIDE, pixel_vectors, thumbnails

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (50, 1, 28, 28), dtype=np.uint8)
    big = rng.integers(0, 256, (20, 3, 96, 96), dtype=np.uint8)
    rows = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    for images in (small, big):
        for fn in (pixel_vectors, lambda x, r=None, chunk=4096: thumbnails(x, 8, r, chunk)):
            whole = fn(images)
            np.testing.assert_array_equal(fn(images, chunk=7).numpy(), whole.numpy())
            np.testing.assert_array_equal(fn(images, rows, chunk=3).numpy(), whole[rows].numpy())
    assert pixel_vectors(small).shape == (50, 28 * 28)  # full resolution up to the bound
    assert pixel_vectors(big).shape == (20, 3 * PIXEL_SIDE * PIXEL_SIDE)  # area-averaged


def test_simulate_writes_the_images_into_the_store_as_it_goes(tmp_path, monkeypatch):
    """``simulate`` decodes the catalog into the world's memory-mapped store and writes the
    query photos there as they are taken: the same world as the in-memory path."""
    from PIL import Image

    from visctr.data.catalog import CatalogConfig, load_catalog
    from visctr.world import simulate as sim

    cat = synthetic_catalog()
    lines = ["item_id,image_path,category"]
    for i, (img, c) in enumerate(zip(cat.images, cat.categories, strict=True)):
        Image.fromarray(img[0]).save(tmp_path / f"{i}.png")
        lines.append(f"{i},{i}.png,c{c}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    cfg = tiny_sim_config()
    cfg.catalog = CatalogConfig(source=str(tmp_path / "m.csv"))
    seen = {}
    real = sim.simulate_arrays

    def spy(cfg, seed, catalog=None, query_images_out=None):
        w = real(cfg, seed, catalog, query_images_out)
        seen["items"], seen["queries"] = type(catalog.images), type(w.query_images)
        return w

    def load_spy(*a, **k):
        seen["workers"] = k.get("workers")
        return load_catalog(*a, **k)

    monkeypatch.setattr(sim, "simulate_arrays", spy)
    monkeypatch.setattr(sim, "load_catalog", load_spy)
    sim.simulate(cfg, 0, tmp_path / "streamed", workers=2)
    from visctr.io import NpyRows

    assert seen == {"items": NpyRows, "queries": NpyRows, "workers": 2}
    monkeypatch.setattr(sim, "simulate_arrays", real)
    write_world(simulate_arrays(cfg, 0, load_catalog(cfg.catalog)), cfg, 0, tmp_path / "mem")
    a, b = World.load(tmp_path / "streamed"), World.load(tmp_path / "mem")
    np.testing.assert_array_equal(a.item_images, b.item_images)
    np.testing.assert_array_equal(a.query_images, b.query_images)
    for split in ("train", "test", "random"):
        ta, tb = a.read_impressions(split), b.read_impressions(split)
        for col in tb:
            np.testing.assert_array_equal(ta[col], tb[col], err_msg=f"{split}.{col}")


def test_simulate_and_run_hand_workers_to_the_decoder(tmp_path, monkeypatch):
    """``--workers N`` of ``visctr simulate`` and ``visctr run`` reaches ``simulate``
    (the world does not depend on it); 0 is a usage error, and ``run --world`` with
    ``--workers`` is refused in one line."""
    from click.testing import CliRunner

    import visctr.world.simulate as sim
    from visctr.cli import main
    from visctr.errors import InputError

    seen = []

    def fake(cfg, seed, out, workers=None):
        seen.append(workers)
        raise InputError("stopped by the test")

    monkeypatch.setattr(sim, "simulate", fake)
    cli = CliRunner()
    r = cli.invoke(
        main, ["simulate", "--preset", "tiny", "--workers", "3", "--out", str(tmp_path / "w")]
    )
    assert "stopped by the test" in r.output and seen == [3]
    r = cli.invoke(
        main, ["run", "--preset", "tiny", "--workers", "2", "--out", str(tmp_path / "r")]
    )
    assert "stopped by the test" in r.output and seen == [3, 2]
    r = cli.invoke(main, ["simulate", "--workers", "0", "--out", str(tmp_path / "w0")])
    assert r.exit_code == 2 and "--workers" in r.output and seen == [3, 2]
    r = cli.invoke(
        main, ["run", "--world", str(tmp_path), "--workers", "2", "--out", str(tmp_path / "r2")]
    )
    assert r.exit_code != 0 and "cannot be combined with" in r.output and "--workers" in r.output
    assert seen == [3, 2] and not (tmp_path / "r2").exists()
