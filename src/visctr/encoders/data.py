"""Training data of the encoder stages: catalog images, click pairs, negative pools.

Batches are fetched whole (``__getitems__``) from uint8 image arrays, so a DataLoader
with ``num_workers=0`` costs a few fancy-indexing calls per step. Augmentation happens
later, batched, in the LightningModule (on the accelerator when there is one).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visctr.errors import InputError
from visctr.ids import IdIndex
from visctr.losses import pair_keys
from visctr.world.logs import log_columns, open_log
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


DEFAULT_SHUFFLE_BUFFER = 262_144  # click pairs held for shuffling (24 bytes each)


class ClickPairs:
    """(query photo, clicked item) batches streamed from the training impressions.

    The log is read in Parquet record batches (``read_rows`` rows; only ``query_id``,
    ``item_id`` and ``clicked``), so memory does not grow with its length: what is held
    is the shuffle buffer (``shuffle_buffer`` clicks), the world's id tables and image
    stores, and the set of distinct clicked (query, item) keys (8 bytes per click) that
    masks false negatives.

    Order per epoch depends on (seed, epoch) only. When every click fits in the buffer
    it is one permutation of all clicks (the order of a shuffled map-style loader over
    them); otherwise a buffered shuffle over a shuffled row-group order. Batches are
    whole (``drop_last``), sharded over DDP ranks by batch with the same count on every
    rank. The position in the epoch is saved in Lightning checkpoints
    (:meth:`state_dict`), so a run resumed mid-epoch continues with the next batch.

    Lightning sets the epoch of a train loader's ``sampler``; this stream is its own.
    """

    def __init__(
        self,
        world: World,
        batch_size: int,
        seed: int,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        read_rows: int = 65_536,
    ) -> None:
        self.path = world.impressions_path("train")
        open_log(self.path)  # exists, readable, schema checked
        self.seed, self.read_rows = int(seed), int(read_rows)
        self.shuffle_buffer = max(int(shuffle_buffer), int(batch_size))
        self._queries = IdIndex(world.queries["query_id"])
        self._query_image_rows = np.asarray(world.queries["image_row"], dtype=np.int64)
        items = world.items
        self._items = IdIndex(items["item_id"])
        self._item_ids = np.asarray(items["item_id"], dtype=np.int64)
        self._item_image_rows = np.asarray(items["image_row"], dtype=np.int64)
        self._item_cats = np.asarray(items["category"], dtype=np.int64)
        self.n, self._keys = self._scan()
        if self.n == 0:
            raise InputError(f"{self.path}: no clicks in the training impressions; S2 needs clicks")
        self.batch_size = min(int(batch_size), self.n)  # tiny logs: one batch rather than none
        self.query_images = materialise(world.query_images)
        self.item_images = materialise(world.item_images)
        self._whole: tuple[np.ndarray, ...] | None = None  # all clicks, when they fit the buffer
        self.epoch = 0
        self._pass_epoch, self._pos = 0, 0  # epoch of the pass under way, batches it yielded
        self._resume: tuple[int, int] | None = None

    # --- reading ------------------------------------------------------------------
    def _chunks(self, groups: list[int] | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        """Clicked rows per record batch, in file order (or ``groups``' order): (query_id,
        query image row, item row), ids checked against the world's tables."""
        pf = open_log(self.path)
        cols = ["query_id", "item_id", "clicked"]
        if groups is None:
            groups = list(range(pf.num_row_groups))
        # one row group per reader: pyarrow's reader over many groups keeps memory for
        # each group read (measured: 22 MB for 4 groups, 72 MB for 16), one per group does not
        batches = (
            rb
            for g in groups
            for rb in pf.iter_batches(batch_size=self.read_rows, row_groups=[g], columns=cols)
        )
        for rb in batches:
            c = log_columns(rb, self.path, cols)
            hit = c["clicked"] == 1
            if not hit.any():
                continue
            qid = c["query_id"][hit].astype(np.int64)
            q = self._queries.rows(qid, strict=True, what="query_id", path=self.path)
            i = self._items.rows(c["item_id"][hit], strict=True, what="item_id", path=self.path)
            yield qid, self._query_image_rows[q], i

    def _scan(self) -> tuple[int, np.ndarray]:
        """One pass over the log: the number of clicks and their distinct pair keys (merged
        as they come, so memory follows the distinct pairs, not the clicks)."""
        n, keys, parts, held = 0, np.zeros(0, np.int64), [], 0
        for qid, _, i in self._chunks():
            n += qid.size
            try:
                part = pair_keys(torch.from_numpy(qid), torch.from_numpy(self._item_ids[i]))
            except ValueError as e:
                raise InputError(f"{self.path}: {e}") from None
            parts.append(np.unique(part.numpy()))
            held += parts[-1].size
            if held > max(keys.size, 1 << 18):
                keys, parts, held = np.unique(np.concatenate([keys, *parts])), [], 0
        return n, np.unique(np.concatenate([keys, *parts]))

    def clicked_keys(self) -> torch.Tensor:
        """Distinct :func:`~visctr.losses.pair_keys` of every training click (for
        false-negative masking)."""
        return torch.from_numpy(self._keys)

    def _global_batches(self, epoch: int) -> Iterator[tuple[np.ndarray, ...] | None]:
        """The epoch's whole batches as (query_id, query image row, item row) arrays."""
        bs = self.batch_size
        if self.n <= self.shuffle_buffer:
            if self._whole is None:
                self._whole = tuple(np.concatenate(a) for a in zip(*self._chunks(), strict=True))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).numpy()
            for s in range(0, self.n - bs + 1, bs):
                idx = perm[s : s + bs]
                yield tuple(a[idx] for a in self._whole)
            return
        import pyarrow.parquet as pq

        rng = np.random.default_rng([self.seed, epoch])
        groups = rng.permutation(pq.ParquetFile(self.path).num_row_groups).tolist()
        buf: list[tuple[np.ndarray, ...]] = []
        held = 0
        for chunk in self._chunks(groups):
            buf.append(chunk)
            held += chunk[0].size
            if held < self.shuffle_buffer:
                continue
            arrays = tuple(np.concatenate(a) for a in zip(*buf, strict=True))
            perm = rng.permutation(held)
            n = (held // 2 // bs) * bs or (held // bs) * bs  # keep half to mix with the next
            for s in range(0, n, bs):
                yield tuple(a[perm[s : s + bs]] for a in arrays)
            buf, held = [tuple(a[perm[n:]] for a in arrays)], held - n
        if held >= bs:
            arrays = tuple(np.concatenate(a) for a in zip(*buf, strict=True))
            perm = rng.permutation(held)
            for s in range(0, held - bs + 1, bs):
                yield tuple(a[perm[s : s + bs]] for a in arrays)

    # --- the loader interface Lightning uses --------------------------------------
    @staticmethod
    def _rank() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return max(1, (self.n // self.batch_size) // self._rank()[1])

    @property
    def sampler(self) -> ClickPairs:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        """Where the pass under way stands: its epoch and the batches it has yielded."""
        return {"epoch": self._pass_epoch, "batches": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # A generator: nothing runs before the first batch is asked for, by which time
        # Lightning has set the epoch (and loaded a checkpoint's position).
        epoch, resume, self._resume = self.epoch, self._resume, None
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        self._pass_epoch, self._pos = epoch, skip
        rank, world = self._rank()
        quota = len(self)
        m = max(1, self.n // self.batch_size)  # whole batches in the epoch, all ranks

        def mine(j: int) -> bool:  # every rank the same count; fewer batches than ranks: share
            return j % world == rank and j < quota * world if m >= world else j == rank % m

        local = 0
        for j, batch in enumerate(self._global_batches(epoch)):
            if not mine(j):
                continue
            local += 1
            if local <= skip:
                continue
            self._pos = local
            yield self._fetch(*batch)
            if local == quota:
                return

    def _fetch(self, qid: np.ndarray, qrow: np.ndarray, i: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "query_image": torch.from_numpy(np.ascontiguousarray(self.query_images[qrow])),
            "item_image": torch.from_numpy(
                np.ascontiguousarray(self.item_images[self._item_image_rows[i]])
            ),
            "query_id": torch.from_numpy(qid),
            "item_id": torch.from_numpy(self._item_ids[i]),
            "category": torch.from_numpy(self._item_cats[i]),
        }


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning checkpoints (the
    ``state_dict`` protocol Lightning looks for), so a run resumed mid-epoch skips the
    batches already trained on instead of starting the epoch over. The epoch is the
    sampler's (``set_epoch``); a position saved in another epoch is ignored."""

    def _epoch(self) -> int | None:
        return getattr(self.sampler, "epoch", None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": getattr(self, "_pass_epoch", None),
            "batches": getattr(self, "_pos", 0),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (state.get("epoch"), int(state["batches"]))

    def __iter__(self) -> Iterator[Any]:
        return self._resumed()

    def _resumed(self) -> Iterator[Any]:
        resume, self._resume = getattr(self, "_resume", None), None
        epoch = self._epoch()
        skip = resume[1] if resume is not None and resume[0] == epoch else 0
        self._pass_epoch, self._pos = epoch, 0
        it = super().__iter__()
        for _ in range(skip):  # fetched and dropped: a few image lookups each, once
            if next(it, None) is None:
                return
            self._pos += 1
        for batch in it:
            self._pos += 1
            yield batch


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader of whole batches with an epoch-seeded order (reproducible, resumable
    mid-epoch). ``pin_memory`` (training on a GPU): batches in page-locked memory, so that
    Lightning's copies to the GPU are asynchronous (``non_blocking``)."""
    n = len(dataset)
    if drop_last and n < batch_size:
        batch_size = n  # tiny worlds: one full batch rather than none
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(n, seed, shuffle),
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=_whole_batch,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def exposed_rows(world: World, catalog: CatalogImages, negatives_from: str) -> np.ndarray | None:
    """The catalog rows S2 may draw extra negatives from: ``None`` (every row) for
    ``negatives_from="catalog"``; for ``"exposed"`` the items the training log shows
    (``items.parquet`` ``train_impressions > 0``)."""
    if negatives_from == "catalog":
        return None
    counts = np.asarray(world.items["train_impressions"], dtype=np.int64)
    shown = IdIndex(np.asarray(world.items["item_id"], dtype=np.int64)).rows(
        catalog.item_ids, strict=True, what="item_id"
    )
    return counts[shown] > 0


class NegativePool:
    """Class-aware extra negatives: a share drawn from the categories of the batch's
    positives (hard negatives that teach fine-grained differences), the rest uniformly
    from the pool. False negatives among them are masked by the loss, not here.

    ``allowed`` (bool per catalog row): the rows the pool draws from (all when omitted;
    ``S2Config.negatives_from: exposed`` passes the items the training log shows). A
    category without an allowed row is drawn from the whole pool instead."""

    def __init__(self, catalog: CatalogImages, allowed: np.ndarray | None = None) -> None:
        self.catalog = catalog
        cats = catalog.categories
        if allowed is None:
            self.rows = np.arange(len(cats), dtype=np.int64)
        else:
            allowed = np.asarray(allowed, dtype=bool)
            if allowed.shape != cats.shape:
                raise ValueError(f"allowed has {allowed.shape[0]} rows, the catalog {len(cats)}")
            self.rows = np.flatnonzero(allowed).astype(np.int64)
            if self.rows.size == 0:
                raise InputError("no item to draw S2 negatives from: none is shown in the log")
        sub = cats[self.rows]
        self.order = self.rows[np.argsort(sub, kind="stable")]
        n_cat = int(cats.max()) + 1 if len(cats) else 0
        counts = np.bincount(sub, minlength=n_cat)
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
        empty = self.count[c] == 0
        if empty.any():  # no allowed item of that category: anywhere in the pool
            same = np.empty(n_same, dtype=np.int64)
            ok = ~empty
            same[ok] = self.order[
                self.start[c[ok]] + np.floor(u[ok] * self.count[c[ok]]).astype(np.int64)
            ]
            same[empty] = self.rows[np.floor(u[empty] * len(self.rows)).astype(np.int64)]
        else:
            same = self.order[self.start[c] + np.floor(u * self.count[c]).astype(np.int64)]
        rand = self.rows[torch.randint(len(self.rows), (size - n_same,), generator=g).numpy()]
        return self.catalog.__getitems__(np.concatenate([same, rand]).tolist())
