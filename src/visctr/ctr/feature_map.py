"""The ``FeatureMap``: the frozen encoding of the CTR features, saved as JSON with a model.

Sparse fields (one fused embedding table, each field at its own offset):

- ``user``: users seen in the fit part of the training logs; everyone else shares index 0.
- ``hour`` (0-23) and ``day`` (day of week, 0-6) from the impression timestamp
  (seconds from world start).
- ``position``: the displayed slot, clipped at ``max_position``. **Used in training and
  fixed to 0 at validation, inference and evaluation**: the model learns the position
  bias of the logs as a separate factor and ranks by what it would predict at the top
  slot, so evaluation measures relevance, not the old system's layout (the usual
  position-as-feature / PAL-style choice).
- ``category``: the item's category.
- ``pop_bucket``: log2-scale bucket of the item's training impression count (0 = never
  shown, then 1, 2-3, 4-7, ...). Counted from the training logs only.
- ``item`` (optional, ``use_item_id``): the item id.

Dense features, looked up at batch time from tables indexed by row (never copied per
impression): the query and item visual vectors, their cosine similarity, the user's
category affinity vector and its entry for the item's category (see ``stats``). How a
batch carries them: ``batch``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visctr.errors import InputError

FEATURE_MAP_VERSION = 1


@dataclass
class FieldSpec:
    name: str
    vocab: int
    offset: int


@dataclass
class FeatureMap:
    """Everything needed to rebuild the training-time encoding at inference (JSON)."""

    fields: list[FieldSpec]
    visual_dim: int
    n_categories: int
    max_position: int
    pop_edges: list[int]  # bucket = number of edges <= training impression count
    t_min: int  # training split time span
    t_max: int
    val_start: int  # impressions with timestamp >= val_start form the validation part
    item_ids: list[int]  # world item order = item row
    item_category: list[int]
    item_pop_bucket: list[int]
    user_ids: list[int]  # user vocabulary: user_ids[i] has index i + 1 (0 = unknown)
    version: int = FEATURE_MAP_VERSION
    note: str = (
        "query vectors are looked up by query_id in the embeddings directory given "
        "at inference; position is fixed to 0 outside training"
    )

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def total_vocab(self) -> int:
        return sum(f.vocab for f in self.fields)

    def offsets(self) -> np.ndarray:
        return np.array([f.offset for f in self.fields], dtype=np.int64)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FeatureMap:
        data = dict(data)
        if data.get("version") != FEATURE_MAP_VERSION:
            raise InputError(
                f"feature map version {data.get('version')!r} is not supported "
                f"(expected {FEATURE_MAP_VERSION}); retrain the CTR model"
            )
        data["fields"] = [FieldSpec(**f) for f in data["fields"]]
        return cls(**data)

    def save(self, path: Path) -> None:
        from visctr.io import write_json

        write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: feature map not found; was the CTR model trained here?")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise InputError(f"{path}: corrupt feature map ({e})") from None
