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
# the sparse fields, in this order (``item`` only with ``use_item_id``), and their vocabulary
FIELD_ORDER = ("user", "hour", "day", "position", "category", "pop_bucket", "item")
MAX_DIM = 65_536  # visual width bound on load (also the debias export's)


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
    def from_json(cls, data: dict, path: str | Path = "feature map") -> FeatureMap:
        """The map of a decoded ``feature_map.json`` after checking every field (keys,
        types, bounds, and that vocabularies, offsets and tables agree); an
        ``InputError`` naming ``path`` and the field otherwise."""
        return cls(**_checked(data, path))

    def save(self, path: Path) -> None:
        from visctr.io import write_json

        write_json(self.to_json(), path)

    @classmethod
    def load(cls, path: Path) -> FeatureMap:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: feature map not found; was the CTR model trained here?")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise InputError(f"{path}: corrupt feature map (not JSON: {_short(e)})") from None
        return cls.from_json(data, path)


def _short(e: BaseException, limit: int = 120) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ints(data: dict, key: str, path, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """``data[key]`` as an int64 array: a JSON list of integers within [lo, hi]."""
    from visctr.io import field

    arr = np.asarray(field(data, key, path, list))
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise InputError(f"{path}: field {key!r} must be a list of integers")
    out = np.zeros(arr.shape, dtype=bool)
    if lo is not None:
        out |= arr < lo
    if hi is not None:
        out |= arr > hi
    if out.any():
        bad = int(arr[out][0])
        raise InputError(f"{path}: field {key!r} holds {bad}, outside [{lo}, {hi}]")
    return arr.astype(np.int64)


def _checked(data, path) -> dict:
    """The constructor arguments of a decoded feature map, checked (see ``from_json``)."""
    from visctr.io import field

    if not isinstance(data, dict):
        raise InputError(f"{path}: corrupt feature map (expected a JSON object)")
    if data.get("version") != FEATURE_MAP_VERSION:
        raise InputError(
            f"{path}: feature map version {str(data.get('version'))[:20]!r} is not supported "
            f"(expected {FEATURE_MAP_VERSION}); retrain the CTR model"
        )
    known = {f.name for f in dataclasses.fields(FeatureMap)}
    extra = sorted(set(data) - known, key=str)
    if extra:
        raise InputError(f"{path}: unexpected field {str(extra[0])[:40]!r} in the feature map")
    big = 2**62
    out = {
        "version": FEATURE_MAP_VERSION,
        "visual_dim": field(data, "visual_dim", path, int, lo=1, hi=MAX_DIM),
        "n_categories": field(data, "n_categories", path, int, lo=1, hi=1_000_000),
        "max_position": field(data, "max_position", path, int, lo=1, hi=1_000_000),
        "t_min": field(data, "t_min", path, int, lo=-big, hi=big),
        "t_max": field(data, "t_max", path, int, lo=-big, hi=big),
        "val_start": field(data, "val_start", path, int, lo=-big, hi=big),
    }
    if "note" in data:
        out["note"] = field(data, "note", path, str)
    if out["t_min"] > out["t_max"]:
        raise InputError(f"{path}: field 't_min' is after 't_max'")
    edges = _ints(data, "pop_edges", path, lo=1)
    if edges.size == 0 or (edges.size > 1 and (np.diff(edges) <= 0).any()):
        raise InputError(f"{path}: field 'pop_edges' must be a non-empty increasing list")
    items = _ints(data, "item_ids", path)
    users = _ints(data, "user_ids", path)
    for key, ids in (("item_ids", items), ("user_ids", users)):
        if np.unique(ids).size != ids.size:
            raise InputError(f"{path}: field {key!r} repeats an id")
    if items.size == 0:
        raise InputError(f"{path}: field 'item_ids' is empty")
    n_cat = out["n_categories"]
    cats = _ints(data, "item_category", path, lo=0, hi=n_cat - 1)
    pops = _ints(data, "item_pop_bucket", path, lo=0, hi=int(edges.size))
    for key, arr in (("item_category", cats), ("item_pop_bucket", pops)):
        if arr.size != items.size:
            raise InputError(f"{path}: field {key!r} has {arr.size} entries for {items.size} items")
    vocab = {
        "user": users.size + 1,
        "hour": 24,
        "day": 7,
        "position": out["max_position"] + 1,
        "category": n_cat,
        "pop_bucket": int(edges.size) + 1,
        "item": items.size,
    }
    raw = field(data, "fields", path, list)
    names = [f.get("name") if isinstance(f, dict) else None for f in raw]
    if names not in (list(FIELD_ORDER[:-1]), list(FIELD_ORDER)):
        raise InputError(
            f"{path}: field 'fields' must name {', '.join(FIELD_ORDER[:-1])} (and optionally "
            f"item) in that order, found {str(names)[:120]}"
        )
    fields, offset = [], 0
    for i, spec in enumerate(raw):
        where = f"fields[{i}]."
        if set(spec) != {"name", "vocab", "offset"}:
            raise InputError(f"{path}: {where[:-1]} must hold exactly name, vocab and offset")
        name = spec["name"]
        v = field(spec, "vocab", path, int, lo=vocab[name], hi=vocab[name], prefix=where)
        field(spec, "offset", path, int, lo=offset, hi=offset, prefix=where)
        fields.append(FieldSpec(name, v, offset))
        offset += v
    out.update(
        fields=fields,
        pop_edges=edges.tolist(),
        item_ids=items.tolist(),
        item_category=cats.tolist(),
        item_pop_bucket=pops.tolist(),
        user_ids=users.tolist(),
    )
    return out
