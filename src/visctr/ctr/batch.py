"""A batch of impressions as the CTR network reads it, and the packer that builds it.

The fast form is one int64 matrix per batch, ``packed [B, F + 4]``: the F sparse field
indices (field offsets already added, in ``FeatureMap.fields`` order), then four row
columns: the user's affinity row, the item row, the query row and the item's category.
Only this module knows that layout: everyone else reads a ``Batch`` by field name.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from visctr.ctr.feature_map import FeatureMap
from visctr.ctr.visual import Embeddings, check_rows
from visctr.errors import InputError
from visctr.ids import IdIndex

# the row columns after the sparse fields, in this order; each is read at a fixed negative
# column index, so no reader needs the field count
ROW_COLUMNS = ("user_row", "item_row", "query_row", "category")
N_EXTRA = len(ROW_COLUMNS)
_USER, _ITEM, _QUERY, _CAT = (i - N_EXTRA for i in range(N_EXTRA))


class Batch(NamedTuple):
    """Impressions ``packed`` (layout above) and their click ``labels`` (float32 ``[B]``).

    Holds torch tensors in training and inference; numpy arrays work the same way.
    """

    packed: torch.Tensor
    labels: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.packed.shape[0])

    @property
    def sparse(self) -> torch.Tensor:
        """``[B, F]`` indices into the fused field embedding table."""
        return self.packed[:, :-N_EXTRA]

    @property
    def user_row(self) -> torch.Tensor:
        """Row of the user's category affinity (0 = users outside the vocabulary)."""
        return self.packed[:, _USER]

    @property
    def item_row(self) -> torch.Tensor:
        """World item row: of ``FeatureMap.item_ids`` and of the item vector table."""
        return self.packed[:, _ITEM]

    @property
    def query_row(self) -> torch.Tensor:
        """Row of the query vector table (``Embeddings.query_ids``)."""
        return self.packed[:, _QUERY]

    @property
    def category(self) -> torch.Tensor:
        """The item's category (a column of the affinity table)."""
        return self.packed[:, _CAT]

    @classmethod
    def from_numpy(cls, packed: np.ndarray, labels: np.ndarray) -> Batch:
        return cls(torch.from_numpy(packed), torch.from_numpy(labels))

    @classmethod
    def from_columns(
        cls,
        sparse: np.ndarray,
        user_row: np.ndarray,
        item_row: np.ndarray,
        query_row: np.ndarray,
        category: np.ndarray,
        labels: np.ndarray,
    ) -> Batch:
        """A torch ``Batch`` from named columns (``sparse [B, F]`` with offsets added);
        for synthetic data in tests and benchmarks."""
        sparse = np.asarray(sparse, dtype=np.int64)
        packed = np.empty((sparse.shape[0], sparse.shape[1] + N_EXTRA), dtype=np.int64)
        packed[:, :-N_EXTRA] = sparse
        packed[:, _USER] = user_row
        packed[:, _ITEM] = item_row
        packed[:, _QUERY] = query_row
        packed[:, _CAT] = category
        return cls.from_numpy(packed, np.asarray(labels, dtype=np.float32))


class BatchPacker:
    """Turns numpy columns of impression logs into packed batches (numpy, for streaming)."""

    def __init__(self, fmap: FeatureMap, emb: Embeddings, fixed_position: int | None = None):
        if emb.dim != fmap.visual_dim:
            raise InputError(
                f"{emb.items_path}: vectors have width {emb.dim} but the CTR "
                f"model was trained on width {fmap.visual_dim}"
            )
        self.fmap = fmap
        self.emb = emb
        self.items = IdIndex(np.asarray(fmap.item_ids, dtype=np.int64))
        self.users = IdIndex(np.asarray(fmap.user_ids, dtype=np.int64))
        self.item_cat = np.asarray(fmap.item_category, dtype=np.int64)
        self.item_pop = np.asarray(fmap.item_pop_bucket, dtype=np.int64)
        self.offsets = fmap.offsets()
        self.names = [f.name for f in fmap.fields]
        self.fixed_position = fixed_position
        if emb.item_has_vector.shape[0] != len(self.items):
            raise InputError(
                f"the world's catalog has {emb.item_has_vector.shape[0]} items but "
                f"the CTR model was trained on {len(self.items)}; use the same world"
            )

    @property
    def width(self) -> int:
        """Columns of ``packed``."""
        return len(self.names) + N_EXTRA

    def pack(self, cols: dict[str, np.ndarray], log_path: Path) -> Batch:
        """A numpy ``Batch`` (``packed`` int64, ``labels`` float32) of log columns."""
        item = self.items.rows(cols["item_id"])
        query = check_rows(item, self.emb, cols, log_path)
        user = self.users.rows(cols["user_id"]) + 1  # -1 (unknown) -> 0
        ts = cols["timestamp"]
        cat = self.item_cat[item]
        values = {
            "user": user,
            "hour": (ts // 3600) % 24,
            "day": (ts // 86400) % 7,
            "position": (
                np.full_like(user, self.fixed_position)
                if self.fixed_position is not None
                else np.clip(cols["position"], 0, self.fmap.max_position)
            ),
            "category": cat,
            "pop_bucket": self.item_pop[item],
            "item": item,
        }
        out = np.empty((item.shape[0], self.width), dtype=np.int64)
        for j, name in enumerate(self.names):
            np.add(values[name], self.offsets[j], out=out[:, j])
        out[:, _USER] = user
        out[:, _ITEM] = item
        out[:, _QUERY] = query
        out[:, _CAT] = cat
        return Batch(out, cols["clicked"].astype(np.float32))
