from __future__ import annotations

import numpy as np
import pytest
import torch

from visctr.encoders.data import CatalogImages, ClickPairs, EpochSampler, NegativePool, make_loader
from visctr.errors import InputError
from visctr.losses import pair_keys
from visctr.world import World


def _catalog(n=90):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 2).repeat(4, 3)
    return CatalogImages(images, np.arange(n), np.arange(100, 100 + n), np.arange(n) % 3)


def test_catalog_batches_are_whole():
    b = _catalog().__getitems__([5, 2])
    assert b["image"].shape == (2, 1, 4, 4) and b["image"].dtype == torch.uint8
    assert b["item_id"].tolist() == [105, 102] and b["category"].tolist() == [2, 2]
    assert int(b["image"][0, 0, 0, 0]) == 5


def test_negative_pool_is_class_aware():
    pool = NegativePool(_catalog())
    g = torch.Generator().manual_seed(0)
    out = pool.sample(100, torch.tensor([1, 1, 1]), 0.5, g)
    cats = out["category"].numpy()
    assert len(cats) == 100 and (cats[:50] == 1).all()
    assert set(cats[50:]) == {0, 1, 2}  # the rest is uniform over the catalog
    again = pool.sample(100, torch.tensor([1, 1, 1]), 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out["item_id"], again["item_id"])


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(50, 1), EpochSampler(50, 1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(4)
    assert list(a) != list(b)


def _world_copy(src, dst, row_group_size=None, edit=None):
    """A copy of a world whose training log is rewritten (smaller row groups, edited rows)."""
    import shutil

    import pyarrow.parquet as pq

    shutil.copytree(src, dst)
    path = dst / "impressions" / "train.parquet"
    table = pq.read_table(path)
    if edit is not None:
        table = edit(table)
    pq.write_table(table, path, row_group_size=row_group_size)
    return World.load(dst)


def _clicks_in_file_order(world):
    imp = world.read_impressions("train")
    hit = imp["clicked"] == 1
    return imp["query_id"][hit], imp["item_id"][hit]


def _epoch(pairs, epoch):
    pairs.set_epoch(epoch)
    return [(b["query_id"].tolist(), b["item_id"].tolist()) for b in pairs]


def test_click_pairs_name_an_unknown_item(tiny_world_dir, tmp_path):
    import pyarrow as pa

    def plant(table):
        first = int(np.flatnonzero(table.column("clicked").to_numpy() == 1)[0])
        ids = table.column("item_id").to_numpy().copy()
        ids[first] = 10**9
        return table.set_column(table.schema.get_field_index("item_id"), "item_id", pa.array(ids))

    world = _world_copy(tiny_world_dir, tmp_path / "w", edit=plant)
    with pytest.raises(InputError, match=r"train\.parquet: item_id 1000000000 not found"):
        ClickPairs(world, 64, 0)


def test_click_pairs_from_world(tiny_world):
    pairs = ClickPairs(tiny_world, 64, 0)
    qids, iids = _clicks_in_file_order(tiny_world)
    assert pairs.n == len(qids) and len(pairs) == len(qids) // 64
    b = next(iter(pairs))
    assert b["query_image"].shape[0] == 64 and b["item_image"].dtype == torch.uint8
    row = int(np.nonzero(tiny_world.queries["query_id"] == int(b["query_id"][0]))[0][0])
    img = tiny_world.query_images[tiny_world.queries["image_row"][row]]
    assert np.array_equal(b["query_image"][0].numpy(), img)
    item = int(np.nonzero(tiny_world.items["item_id"] == int(b["item_id"][0]))[0][0])
    assert np.array_equal(b["item_image"][0].numpy(), tiny_world.item_images[item])
    assert int(b["category"][0]) == int(tiny_world.items["category"][item])
    keys = pair_keys(torch.from_numpy(qids), torch.from_numpy(iids))
    assert torch.equal(pairs.clicked_keys(), torch.unique(keys))


def test_small_log_order_is_one_seeded_permutation(tiny_world):
    """All clicks fit the buffer: the order of a shuffled map-style loader over them (the
    order S2 trained with before it streamed), so results did not change."""
    qids, iids = _clicks_in_file_order(tiny_world)
    pairs = ClickPairs(tiny_world, 64, 5)
    sampler = EpochSampler(len(qids), 5)
    for epoch in (0, 2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        want = [order[s : s + 64] for s in range(0, len(order) - 63, 64)]
        want = [(qids[i].tolist(), iids[i].tolist()) for i in want]
        assert _epoch(pairs, epoch) == want


def test_large_log_streams_through_a_bounded_buffer(tiny_world_dir, tmp_path, monkeypatch):
    """A log with more clicks than the buffer is never read whole: each epoch still covers
    every click at most once, in whole batches, in an order fixed by (seed, epoch)."""
    world = _world_copy(tiny_world_dir, tmp_path / "w", row_group_size=500)
    qids, iids = _clicks_in_file_order(world)

    def whole(*a, **k):
        raise AssertionError("the whole log was read")

    monkeypatch.setattr(type(world), "read_impressions", whole)
    monkeypatch.setattr("pyarrow.parquet.read_table", whole)
    pairs = ClickPairs(world, 16, 1, shuffle_buffer=100, read_rows=300)
    assert pairs.n == len(qids) > 100
    clicks = set(zip(qids.tolist(), iids.tolist(), strict=True))
    a = _epoch(pairs, 0)
    assert len(a) == len(pairs) == len(qids) // 16
    seen = [p for q, i in a for p in zip(q, i, strict=True)]
    assert all(len(q) == 16 for q, _ in a) and set(seen) <= clicks
    assert len(clicks) == len(qids)  # no pair clicked twice in this log
    assert len(set(seen)) == len(seen) == len(qids) - len(qids) % 16  # once each, but a few
    assert _epoch(pairs, 0) == a and _epoch(pairs, 1) != a
    assert _epoch(ClickPairs(world, 16, 1, shuffle_buffer=100, read_rows=300), 0) == a


@pytest.mark.parametrize("buffer", [10**6, 100])
def test_stream_resumes_mid_epoch(tiny_world_dir, tmp_path, buffer):
    """The position saved in a checkpoint: a new reader (a resumed process) yields the rest
    of the epoch; a position from an earlier epoch does not skip anything."""
    world = _world_copy(tiny_world_dir, tmp_path / "w", row_group_size=500)
    pairs = ClickPairs(world, 16, 1, shuffle_buffer=buffer, read_rows=300)
    full = _epoch(pairs, 1)
    pairs.set_epoch(1)
    it = iter(pairs)
    for _ in range(5):
        next(it)
    state = pairs.state_dict()
    assert state == {"epoch": 1, "batches": 5}
    again = ClickPairs(world, 16, 1, shuffle_buffer=buffer, read_rows=300)
    again.load_state_dict(state)
    assert _epoch(again, 1) == full[5:]
    again.load_state_dict(state)
    assert _epoch(again, 2) == _epoch(pairs, 2)  # the saved epoch was over


def test_stream_shards_whole_batches_over_ranks(tiny_world, monkeypatch):
    pairs = ClickPairs(tiny_world, 16, 3)
    every = _epoch(pairs, 0)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(ClickPairs, "_rank", staticmethod(lambda r=rank: (r, 2)))
        shards.append(_epoch(pairs, 0))
        assert len(shards[-1]) == len(pairs) == len(every) // 2
    assert shards[0] == every[0 : 2 * len(pairs) : 2] and shards[1] == every[1 : 2 * len(pairs) : 2]


def test_catalog_loader_resumes_mid_epoch():
    loader = make_loader(_catalog(), 8, 0)
    loader.sampler.set_epoch(2)
    full = [b["item_id"].tolist() for b in loader]
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    again = make_loader(_catalog(), 8, 0)
    again.load_state_dict(state)
    again.sampler.set_epoch(2)
    assert [b["item_id"].tolist() for b in again] == full[4:]
    again.load_state_dict(state)
    again.sampler.set_epoch(3)
    assert len(list(again)) == len(full)  # a position from another epoch is ignored


def test_click_pairs_refuse_a_bad_clicked_value(tiny_world_dir, tmp_path):
    import pyarrow as pa

    def plant(table):
        clicked = table.column("clicked").to_numpy().copy()
        clicked[3] = 2
        at = table.schema.get_field_index("clicked")
        return table.set_column(at, "clicked", pa.array(clicked, table.schema.field(at).type))

    world = _world_copy(tiny_world_dir, tmp_path / "w", edit=plant)
    with pytest.raises(
        InputError, match=r"train\.parquet: column 'clicked' must be 0 or 1, found 2"
    ):
        ClickPairs(world, 64, 0)


def test_negative_pool_draws_as_before_from_the_whole_catalog():
    # the same draws as the pool before `negatives_from` existed (computed on it)
    out = NegativePool(_catalog()).sample(
        12, torch.tensor([0, 2]), 0.5, torch.Generator().manual_seed(3)
    )
    assert out["item_id"].tolist() == [115, 166, 156, 117, 139, 136, 180, 144, 136, 159, 151, 146]


def test_exposed_negatives_never_draw_a_never_shown_item():
    allowed = np.zeros(90, dtype=bool)
    allowed[[0, 3, 4, 7, 11, 20, 41, 42, 88]] = True  # categories 0, 1, 2 all present
    pool = NegativePool(_catalog(), allowed)
    g = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(50):
        out = pool.sample(64, torch.tensor([0, 1, 2]), 0.5, g)
        drawn |= set((out["item_id"].numpy() - 100).tolist())
    assert drawn == set(np.flatnonzero(allowed).tolist())  # every allowed row, nothing else
    # a batch category without a shown item falls back to the pool, still never unshown
    only_cat0 = np.isin(np.arange(90), [0, 3, 6])
    out = NegativePool(_catalog(), only_cat0).sample(40, torch.tensor([1]), 1.0, g)
    assert set((out["item_id"].numpy() - 100).tolist()) <= {0, 3, 6}
    with pytest.raises(InputError, match="none is shown"):
        NegativePool(_catalog(), np.zeros(90, dtype=bool))


def test_exposed_rows_are_the_items_the_training_log_shows(tiny_world):
    from visctr.encoders.data import exposed_rows

    catalog = CatalogImages.from_world(tiny_world)
    assert exposed_rows(tiny_world, catalog, "catalog") is None
    rows = exposed_rows(tiny_world, catalog, "exposed")
    shown = np.unique(tiny_world.read_impressions("train")["item_id"])
    assert set(catalog.item_ids[rows].tolist()) == set(shown.tolist())
    assert 0 < rows.sum() < len(rows)
