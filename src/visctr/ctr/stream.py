"""Streaming impressions: Parquet record batches -> shuffled ``Batch``es of packed indices.

Memory is bounded by ``shuffle_buffer + read_rows`` rows whatever the log size: the file
is read batch by batch (``ParquetFile.iter_batches``), each batch is encoded at once to
int64 indices, and rows are shuffled within a buffer (plus a shuffled row-group order per
epoch). Work is sharded over DataLoader workers and distributed ranks: by row group when
there are enough of them, else by row (every n-th row of each record batch). Under DDP every rank must take the same
number of optimiser steps (a rank that stops early leaves the others waiting in
all-reduce), so with more than one reader and ``rows`` given, each reader yields exactly
``rows // (readers * batch_size)`` batches (at least one), starting its shard over if it
runs short, as ``DistributedSampler`` pads by repeating samples.

Exact resume: a stream's order is a pure function of ``(seed, epoch)``, so its position is
two integers, the epoch and the batches already consumed in it. ``set_position`` makes the
next pass start there (the skipped rows are read and dropped, the shuffle draws replayed),
so a run resumed from a mid-epoch checkpoint sees the batches the uninterrupted run saw.
The trainer keeps the position in its checkpoints (``trainer.CTRModule``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from visctr.ctr.batch import Batch, BatchPacker
from visctr.world.logs import LOG_COLUMNS, log_columns, open_log

Part = Literal["all", "fit", "val"]


def _shard() -> tuple[int, int]:
    """(index, count) of this reader among all ranks x workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


class ImpressionStream(IterableDataset):
    """Yields ``Batch``es (packed int64 indices, float32 labels) from one impressions file.

    ``part`` selects the fit part (timestamp < ``val_start``), the validation part, or all.
    With ``shuffle`` the order changes every epoch (seed + epoch), reproducibly. Each pass
    runs epoch ``epoch`` and then advances it; ``set_epoch`` / ``set_position`` choose.
    """

    def __init__(
        self,
        path: Path,
        packer: BatchPacker,
        batch_size: int,
        part: Part = "all",
        val_start: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 200_000,
        read_rows: int = 65_536,
        shard: bool = True,
        rows: int | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.packer = packer
        self.batch_size = batch_size
        self.part = part
        self.val_start = val_start
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = max(shuffle_buffer, batch_size)
        self.read_rows = read_rows
        self.epoch = 0
        self.skip = 0  # batches of the next pass to drop (a resumed mid-epoch position)
        self.shard = shard  # False: every rank/worker reads everything (validation)
        self.rows = rows  # rows in the selected part: equal batch counts across readers
        if part != "all" and val_start is None:
            raise ValueError("val_start is needed to select the fit or validation part")

    def set_epoch(self, epoch: int) -> None:
        """The epoch (shuffle order) of the next pass."""
        self.epoch = int(epoch)

    def set_position(self, epoch: int, batches: int) -> None:
        """Start the next pass at epoch ``epoch`` after its first ``batches`` batches (this
        reader's), as if they had just been consumed."""
        if epoch < 0 or batches < 0:
            raise ValueError(f"stream position must be >= 0, got epoch {epoch}, batch {batches}")
        self.epoch, self.skip = int(epoch), int(batches)

    def _reader(self) -> tuple[int, int]:
        """(index, count) of this reader; validation streams are not sharded."""
        return _shard() if self.shard else (0, 1)

    def _part_groups(self, pf) -> np.ndarray:
        """Row groups that can hold rows of this part, from the timestamp statistics.

        Logs are time-ordered, so the validation part is the last few row groups: reading
        only those (rather than decoding and dropping the whole file) keeps validation
        time and memory independent of the log's length. Without statistics, all groups.
        """
        groups = np.arange(pf.num_row_groups)
        if self.part == "all":
            return groups
        col = pf.schema_arrow.get_field_index("timestamp")
        keep = []
        for g in groups:
            st = pf.metadata.row_group(int(g)).column(col).statistics
            if st is None or not st.has_min_max:
                keep.append(g)
            elif self.part == "fit" and st.min < self.val_start:
                keep.append(g)
            elif self.part == "val" and st.max >= self.val_start:
                keep.append(g)
        return np.asarray(keep, dtype=np.int64)

    def _batches(self, rng: np.random.Generator | None) -> Iterator[dict[str, np.ndarray]]:
        pf = open_log(self.path)
        shard, n_shards = self._reader()
        groups = self._part_groups(pf)
        if rng is not None:
            groups = rng.permutation(groups)
        by_group = groups.size >= n_shards
        if by_group:
            groups = groups[shard::n_shards]
        if groups.size == 0:
            return
        it = pf.iter_batches(
            batch_size=self.read_rows, row_groups=groups.tolist(), columns=LOG_COLUMNS
        )
        for rb in it:
            cols = log_columns(rb, self.path)
            if not by_group:  # too few row groups: every n-th row of each batch
                cols = {c: v[shard::n_shards] for c, v in cols.items()}
            if self.part != "all":
                keep = cols["timestamp"] < self.val_start
                if self.part == "val":
                    keep = ~keep
                if not keep.all():
                    cols = {c: v[keep] for c, v in cols.items()}
            if cols["item_id"].size:
                yield cols

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        skip, self.skip = self.skip, 0
        self.epoch += 1
        for i, batch in enumerate(self._epoch(rng)):
            if i >= skip:
                yield Batch.from_numpy(*batch)

    def _epoch(self, rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch's batches as numpy ``(packed, labels)`` (wrapped in tensors only once
        past the resumed position)."""
        n_shards = self._reader()[1]
        if n_shards == 1 or self.rows is None:
            yield from self._one_pass(rng)
            return
        quota = max(1, self.rows // (n_shards * self.batch_size))
        emitted = 0
        while True:
            before = emitted
            for batch in self._one_pass(rng):
                yield batch
                emitted += 1
                if emitted == quota:
                    return
            if emitted == before:
                raise RuntimeError(f"{self.path}: this reader's shard is empty")

    def _one_pass(self, rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bs = self.batch_size
        buf_x: list[np.ndarray] = []
        buf_y: list[np.ndarray] = []
        held = 0
        for cols in self._batches(rng):
            x, y = self.packer.pack(cols, self.path)
            if rng is None:  # in order: emit as we go
                buf_x.append(x)
                buf_y.append(y)
                held += y.size
                if held >= bs:
                    xs, ys = np.concatenate(buf_x), np.concatenate(buf_y)
                    n = (held // bs) * bs
                    for s in range(0, n, bs):
                        yield xs[s : s + bs], ys[s : s + bs]
                    buf_x, buf_y, held = [xs[n:]], [ys[n:]], held - n
                continue
            buf_x.append(x)
            buf_y.append(y)
            held += y.size
            if held >= self.shuffle_buffer:
                xs, ys = np.concatenate(buf_x), np.concatenate(buf_y)
                perm = rng.permutation(held)
                n = (held // 2 // bs) * bs or (held // bs) * bs  # keep half to mix with next
                for s in range(0, n, bs):
                    idx = perm[s : s + bs]
                    yield xs[idx], ys[idx]
                rest = perm[n:]
                buf_x, buf_y, held = [xs[rest]], [ys[rest]], rest.size
        if held:
            xs, ys = np.concatenate(buf_x), np.concatenate(buf_y)
            if rng is not None:
                perm = rng.permutation(held)
                xs, ys = xs[perm], ys[perm]
            for s in range(0, held, bs):
                yield xs[s : s + bs], ys[s : s + bs]


class Grouped(IterableDataset):
    """Yields lists of up to ``k`` consecutive batches of ``dataset``.

    The CTR module takes one optimiser step per batch but sees ``k`` batches per Lightning
    ``training_step``, so the loop's per-step overhead is paid once per ``k`` steps.
    """

    def __init__(self, dataset: IterableDataset, k: int):
        super().__init__()
        self.dataset = dataset
        self.k = max(1, k)

    def __iter__(self) -> Iterator[list[Batch]]:
        group: list[Batch] = []
        for batch in self.dataset:
            group.append(batch)
            if len(group) == self.k:
                yield group
                group = []
        if group:
            yield group
