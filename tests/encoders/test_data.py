from __future__ import annotations

import numpy as np
import pytest
import torch

from visctr.encoders.data import CatalogImages, ClickPairs, EpochSampler, NegativePool
from visctr.errors import InputError


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


def test_click_pairs_name_an_unknown_item(tiny_world, monkeypatch):
    imp = tiny_world.read_impressions("train")
    imp["item_id"] = imp["item_id"].copy()
    imp["item_id"][np.flatnonzero(imp["clicked"] == 1)[0]] = 10**9
    monkeypatch.setattr(type(tiny_world), "read_impressions", lambda self, split: imp)
    with pytest.raises(InputError, match=r"train\.parquet: item_id 1000000000 not found"):
        ClickPairs(tiny_world)


def test_click_pairs_from_world(tiny_world):
    pairs = ClickPairs(tiny_world)
    imp = tiny_world.read_impressions("train")
    assert len(pairs) == int((imp["clicked"] == 1).sum())
    b = pairs.__getitems__([0, 1])
    row = int(np.nonzero(tiny_world.queries["query_id"] == int(b["query_id"][0]))[0][0])
    img = tiny_world.query_images[tiny_world.queries["image_row"][row]]
    assert np.array_equal(b["query_image"][0].numpy(), img)
    assert pairs.clicked_pairs().shape == (len(pairs), 2)
