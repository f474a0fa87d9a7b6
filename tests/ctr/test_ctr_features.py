"""Feature encoding and streaming: ids, buckets, affinity from fit-part clicks, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visctr.ctr import CTRConfig
from visctr.ctr import stream as stream_mod
from visctr.ctr.batch import N_EXTRA, Batch, BatchPacker
from visctr.ctr.feature_map import FeatureMap
from visctr.ctr.stats import compute_train_stats, pop_bucket_edges, read_user_ids
from visctr.ctr.stream import ImpressionStream
from visctr.ctr.visual import load_embeddings
from visctr.ids import IdIndex


def test_pop_buckets_are_log2():
    edges = np.asarray(pop_bucket_edges(6))  # 1, 2, 4, 8, 16
    counts = np.array([0, 1, 2, 3, 4, 7, 8, 15, 16, 1000])
    assert np.searchsorted(edges, counts, side="right").tolist() == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]


@pytest.fixture(scope="module")
def stats(tiny_world, tiny_embeddings):
    cfg = CTRConfig()
    emb = load_embeddings(tiny_embeddings, tiny_world)
    return cfg, emb, compute_train_stats(tiny_world, emb, cfg)


def test_statistics_use_the_fit_part_only(tiny_world, stats):
    cfg, _, st = stats
    fmap = st.feature_map
    logs = tiny_world.read_impressions("train")
    fit = logs["timestamp"] < fmap.val_start
    assert 0 < (~fit).sum() < fit.sum() and st.n_fit == fit.sum()
    # validation = the last share of the training *time span*
    span = fmap.t_max - fmap.t_min
    assert abs((fmap.t_max - fmap.val_start) - cfg.validation_share * span) <= 1
    # popularity counts
    rows = IdIndex(tiny_world.items["item_id"]).rows(logs["item_id"][fit])
    n_items = len(tiny_world.items["item_id"])
    assert np.array_equal(st.item_counts, np.bincount(rows, minlength=n_items))
    # affinity: brute force for every user in the vocabulary
    cats = tiny_world.items["category"][IdIndex(tiny_world.items["item_id"]).rows(logs["item_id"])]
    n_cat = tiny_world.n_categories
    clicked = logs["clicked"].astype(bool) & fit
    prior = (np.bincount(cats[clicked], minlength=n_cat) + 1.0) / (clicked.sum() + n_cat)
    a = cfg.affinity_smoothing
    assert np.allclose(st.affinity[0], prior)
    for i, uid in enumerate(fmap.user_ids):
        mine = clicked & (logs["user_id"] == uid)
        c = np.bincount(cats[mine], minlength=n_cat)
        assert np.allclose(st.affinity[i + 1], (c + a * prior) / (c.sum() + a), atol=1e-6)
    assert set(fmap.user_ids) == set(np.unique(logs["user_id"][fit]).tolist())
    assert set(fmap.user_ids) <= set(read_user_ids(tiny_world).tolist())


def test_feature_map_json_roundtrip(stats, tmp_path):
    fmap = stats[2].feature_map
    fmap.save(tmp_path / "fm.json")
    again = FeatureMap.load(tmp_path / "fm.json")
    assert again == fmap
    assert json.loads((tmp_path / "fm.json").read_text())["fields"][0]["name"] == "user"
    offs = fmap.offsets()
    assert offs[0] == 0 and all(
        offs[i + 1] == offs[i] + fmap.fields[i].vocab for i in range(len(offs) - 1)
    )


def _collect(ds):
    batches = list(ds)
    assert all(isinstance(b, Batch) for b in batches)
    return (
        np.concatenate([b.packed.numpy() for b in batches]),
        np.concatenate([b.labels.numpy() for b in batches]),
    )


def _sorted_rows(x):
    return x[np.lexsort(x.T[::-1])]


def test_stream_covers_each_row_once_shuffled_and_reproducible(tiny_world, stats):
    _, emb, st = stats
    fmap = st.feature_map
    path = tiny_world.impressions_path("train")
    enc = BatchPacker(fmap, emb)

    def make(seed, part):
        return ImpressionStream(
            path,
            enc,
            100,
            part=part,
            val_start=fmap.val_start,
            shuffle=True,
            seed=seed,
            shuffle_buffer=1000,
            read_rows=700,
        )

    x1, y1 = _collect(make(0, "fit"))
    x2, _ = _collect(make(0, "fit"))
    x3, _ = _collect(make(1, "fit"))
    xv, _ = _collect(make(0, "val"))
    assert np.array_equal(x1, x2) and not np.array_equal(x1, x3)
    assert len(x1) == st.n_fit and len(xv) == st.n_val
    plain, _ = _collect(ImpressionStream(path, enc, 100, part="fit", val_start=fmap.val_start))
    assert np.array_equal(_sorted_rows(plain), _sorted_rows(x1))
    assert not np.array_equal(plain, x1)
    assert y1.sum() == st.n_fit_clicks


@pytest.mark.parametrize("row_group", [None, 700])  # one row group (split by batch) / many
def test_stream_shards_partition_the_rows(tiny_world, stats, monkeypatch, tmp_path, row_group):
    import pyarrow.parquet as pq

    _, emb, st = stats
    enc = BatchPacker(st.feature_map, emb)
    path = tiny_world.impressions_path("train")
    if row_group:
        path2 = tmp_path / "train.parquet"
        pq.write_table(pq.read_table(path), path2, row_group_size=row_group)
        path = path2
        assert pq.ParquetFile(path).num_row_groups >= 3
    parts = []
    for shard in range(3):
        monkeypatch.setattr(stream_mod, "_shard", lambda s=shard: (s, 3))
        parts.append(_collect(ImpressionStream(path, enc, 64, read_rows=500, shuffle=True))[0])
    monkeypatch.undo()
    whole = _collect(ImpressionStream(path, enc, 64, read_rows=500))[0]
    assert all(len(p) for p in parts)
    assert sum(len(p) for p in parts) == len(whole)
    assert np.array_equal(_sorted_rows(np.concatenate(parts)), _sorted_rows(whole))


def test_parts_read_only_the_row_groups_that_can_hold_them(tiny_world, stats, tmp_path):
    import pyarrow.parquet as pq

    _, emb, st = stats
    fmap = st.feature_map
    path = tmp_path / "train.parquet"
    pq.write_table(pq.read_table(tiny_world.impressions_path("train")), path, row_group_size=500)
    pf = pq.ParquetFile(path)
    enc = BatchPacker(fmap, emb)

    def stream(part):
        return ImpressionStream(path, enc, 64, part=part, val_start=fmap.val_start, read_rows=300)

    fit_g, val_g = stream("fit")._part_groups(pf), stream("val")._part_groups(pf)
    assert 0 < len(val_g) < pf.num_row_groups and len(fit_g) > 0
    assert set(fit_g) | set(val_g) == set(range(pf.num_row_groups))  # time-ordered logs
    ts = [
        pf.read_row_group(int(g), columns=["timestamp"])["timestamp"]
        for g in range(pf.num_row_groups)
    ]
    for g in set(range(pf.num_row_groups)) - set(val_g):
        assert max(ts[g].to_pylist()) < fmap.val_start
    # the rows are still exactly the parts' rows
    assert len(_collect(stream("fit"))[0]) == st.n_fit
    assert len(_collect(stream("val"))[0]) == st.n_val


def test_encoding_fields_and_fixed_position(tiny_world, stats):
    _, emb, st = stats
    fmap = st.feature_map
    logs = tiny_world.read_impressions("train")
    n = 50
    cols = {k: v[:n] for k, v in logs.items()}
    path = tiny_world.impressions_path("train")
    b = BatchPacker(fmap, emb).pack(cols, path)
    be = BatchPacker(fmap, emb, fixed_position=0).pack(cols, path)
    names = [f.name for f in fmap.fields]
    f = len(names)
    assert b.packed.shape == (n, f + N_EXTRA) and np.array_equal(b.labels, cols["clicked"])
    x, xe = b.sparse, be.sparse
    assert x.shape == (n, f)
    off = {fs.name: fs.offset for fs in fmap.fields}
    assert np.array_equal(x[:, names.index("position")] - off["position"], cols["position"])
    assert (xe[:, names.index("position")] == off["position"]).all()
    assert np.array_equal(x[:, names.index("hour")] - off["hour"], (cols["timestamp"] // 3600) % 24)
    assert np.array_equal(np.asarray(fmap.item_ids)[b.item_row], cols["item_id"])
    assert np.array_equal(emb.query_ids.ids[b.query_row], cols["query_id"])
    cats = np.asarray(fmap.item_category)[b.item_row]
    assert np.array_equal(b.category, cats)
    assert np.array_equal(x[:, names.index("category")] - off["category"], cats)
    user = x[:, names.index("user")] - off["user"]
    assert np.array_equal(b.user_row, user)  # affinity row = user field index (0 = unknown)
    assert (x < fmap.total_vocab).all() and (x >= 0).all()


def test_batch_from_columns_reads_back_by_name():
    rng = np.random.default_rng(0)
    sparse = rng.integers(0, 100, (6, 3))
    cols = [rng.integers(0, 50, 6) for _ in range(4)]
    y = rng.random(6) < 0.5
    b = Batch.from_columns(sparse, *cols, y)
    assert isinstance(b.packed, torch.Tensor) and b.size == 6
    assert np.array_equal(b.sparse.numpy(), sparse)
    for got, want in zip((b.user_row, b.item_row, b.query_row, b.category), cols, strict=True):
        assert np.array_equal(got.numpy(), want)
    assert np.array_equal(b.labels.numpy(), y.astype(np.float32))
