"""Training data of the encoder stages: catalog images, click pairs, negative pools.

Batches are fetched whole (``__getitems__``) from uint8 image arrays, so a DataLoader
with ``num_workers=0`` costs a few fancy-indexing calls per step. Augmentation happens
later, batched, in the LightningModule (on the accelerator when there is one).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visctr.errors import InputError
from visctr.ids import IdIndex
from visctr.world.store import World

IN_MEMORY_LIMIT = 2 * 2**30  # image stores below this size are read into RAM once


def materialise(images: np.ndarray) -> np.ndarray:
    """Load a memory-mapped image store into RAM when it is small enough."""
    if isinstance(images, np.memmap) and images.nbytes <= IN_MEMORY_LIMIT:
        return np.ascontiguousarray(images)
    return images


class EpochSampler(Sampler[int]):
    """Shuffled indices, a fixed permutation per (seed, epoch): Lightning calls ``set_epoch``,
    so a resumed run sees the same order as an uninterrupted one."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _whole_batch(batch):
    return batch


class CatalogImages(Dataset):
    """Catalog items: ``{"image": uint8 [B,C,H,W], "item_id": int64 [B], "category": int64 [B]}``."""

    def __init__(
        self, images: np.ndarray, rows: np.ndarray, item_ids: np.ndarray, categories: np.ndarray
    ) -> None:
        self.images, self.rows = images, np.asarray(rows, dtype=np.int64)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.categories = np.asarray(categories, dtype=np.int64)

    @classmethod
    def from_world(cls, world: World) -> CatalogImages:
        items = world.items
        if len(items["item_id"]) == 0:
            raise InputError(f"{world.root / 'items.parquet'}: the catalog is empty")
        return cls(
            materialise(world.item_images), items["image_row"], items["item_id"], items["category"]
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self.images[self.rows[idx]])),
            "item_id": torch.from_numpy(self.item_ids[idx]),
            "category": torch.from_numpy(self.categories[idx]),
        }


class ClickPairs(Dataset):
    """(query photo, clicked item) pairs from the training impressions."""

    def __init__(self, world: World) -> None:
        imp = world.read_impressions("train")
        clicked = imp["clicked"] == 1
        self.query_ids = imp["query_id"][clicked].astype(np.int64)
        self.item_ids = imp["item_id"][clicked].astype(np.int64)
        path = world.impressions_path("train")
        if len(self.query_ids) == 0:
            raise InputError(f"{path}: no clicks in the training impressions; S2 needs clicks")
        queries = IdIndex(world.queries["query_id"])
        q = queries.rows(self.query_ids, strict=True, what="query_id", path=path)
        self.query_rows = world.queries["image_row"][q]
        items = IdIndex(world.items["item_id"])
        i = items.rows(self.item_ids, strict=True, what="item_id", path=path)
        self.item_rows = world.items["image_row"][i]
        self.item_cats = world.items["category"][i].astype(np.int64)
        self.query_images = materialise(world.query_images)
        self.item_images = materialise(world.item_images)

    def __len__(self) -> int:
        return len(self.query_ids)

    def clicked_pairs(self) -> torch.Tensor:
        """``[P, 2]`` (query_id, item_id) of every training click (for false-negative masking)."""
        return torch.from_numpy(np.stack([self.query_ids, self.item_ids], axis=1))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(idx, dtype=np.int64)
        return {
            "query_image": torch.from_numpy(
                np.ascontiguousarray(self.query_images[self.query_rows[idx]])
            ),
            "item_image": torch.from_numpy(
                np.ascontiguousarray(self.item_images[self.item_rows[idx]])
            ),
            "query_id": torch.from_numpy(self.query_ids[idx]),
            "item_id": torch.from_numpy(self.item_ids[idx]),
            "category": torch.from_numpy(self.item_cats[idx]),
        }


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
) -> DataLoader:
    """A loader of whole batches with an epoch-seeded order (reproducible, resumable)."""
    n = len(dataset)
    if drop_last and n < batch_size:
        batch_size = n  # tiny worlds: one full batch rather than none
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(n, seed, shuffle),
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_whole_batch,
        persistent_workers=num_workers > 0,
    )


class NegativePool:
    """Class-aware extra negatives: a share drawn from the categories of the batch's
    positives (hard negatives that teach fine-grained differences), the rest uniformly
    from the catalog. False negatives among them are masked by the loss, not here."""

    def __init__(self, catalog: CatalogImages) -> None:
        self.catalog = catalog
        cats = catalog.categories
        self.order = np.argsort(cats, kind="stable")
        n_cat = int(cats.max()) + 1 if len(cats) else 0
        counts = np.bincount(cats, minlength=n_cat)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.count = counts

    def sample(
        self, size: int, batch_categories: torch.Tensor, share_same: float, g: torch.Generator
    ) -> dict[str, torch.Tensor]:
        n_same = int(round(size * share_same))
        cats = batch_categories.cpu().numpy()
        pick = torch.randint(len(cats), (n_same,), generator=g).numpy()
        c = cats[pick]
        u = torch.rand(n_same, generator=g, dtype=torch.float64).numpy()
        same = self.order[self.start[c] + np.floor(u * self.count[c]).astype(np.int64)]
        rand = torch.randint(len(self.catalog), (size - n_same,), generator=g).numpy()
        return self.catalog.__getitems__(np.concatenate([same, rand]).tolist())
