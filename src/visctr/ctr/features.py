"""CTR features from the impression logs, and the ``FeatureMap`` that freezes their encoding.

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
category affinity vector and its entry for the item's category. Affinity is computed
from training clicks only, smoothed towards the global click distribution over
categories: ``(clicks[u, c] + α·prior[c]) / (clicks[u] + α)``.

Statistics (user vocabulary, affinity, popularity) use the *fit* part of the training
split only, i.e. without its last ``validation_share`` of time, so validation clicks never
leak into features.

A batch is one int64 tensor ``[B, F + 4]``: the F sparse field indices (offsets already
added), then the user's affinity row, the item row, the query row and the item category.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visctr.embeddings import read_embeddings
from visctr.errors import InputError
from visctr.ids import IdIndex
from visctr.world.store import IMPRESSION_COLUMNS, World, check_columns

FEATURE_MAP_VERSION = 1
LOG_COLUMNS = ["query_id", "user_id", "item_id", "position", "clicked", "timestamp"]
# extra columns of the packed index tensor, after the sparse fields
N_EXTRA = 4  # user affinity row, item row, query row, item category


@dataclass
class Embeddings:
    """One encoder's item and query vectors (L2-normalised), items aligned to world rows."""

    item_vectors: np.ndarray  # float32 [n_world_items, D]; zero rows where missing
    item_has_vector: np.ndarray  # bool [n_world_items]
    query_ids: IdIndex  # query_id -> row of query_vectors
    query_vectors: np.ndarray  # float32 [n_queries, D]
    items_path: Path
    queries_path: Path

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])


def load_embeddings(directory: Path, world: World, queries: bool = True) -> Embeddings:
    """Read ``items.parquet`` (and ``queries.parquet``) of an embeddings directory."""
    directory = Path(directory)
    items_path, queries_path = directory / "items.parquet", directory / "queries.parquet"
    if not directory.is_dir():
        raise InputError(f"{directory}: embeddings directory not found; run 'visctr embed'")
    item_ids, item_vecs = read_embeddings(items_path, "item_id")
    world_items = np.asarray(world.items["item_id"], dtype=np.int64)
    rows = IdIndex(item_ids).rows(world_items)
    has = rows >= 0
    aligned = np.zeros((world_items.size, item_vecs.shape[1]), dtype=np.float32)
    aligned[has] = item_vecs[rows[has]]
    if queries:
        query_ids, query_vecs = read_embeddings(queries_path, "query_id")
        if query_vecs.shape[1] != item_vecs.shape[1]:
            raise InputError(
                f"{queries_path}: vectors have width {query_vecs.shape[1]} but "
                f"{items_path} has width {item_vecs.shape[1]}; both must come "
                "from the same encoder"
            )
    else:
        query_ids, query_vecs = np.zeros(0, np.int64), np.zeros((0, item_vecs.shape[1]), np.float32)
    return Embeddings(aligned, has, IdIndex(query_ids), query_vecs, items_path, queries_path)


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


@dataclass
class TrainStats:
    """What the statistics pass over the training logs found."""

    feature_map: FeatureMap
    affinity: np.ndarray  # float32 [n_users_vocab + 1, n_categories]
    item_counts: np.ndarray  # int64 [n_items] fit-part impressions per item row
    n_fit: int
    n_val: int
    n_val_clicks: int
    n_fit_clicks: int = 0


def open_log(path: Path):
    """Open an impressions Parquet file and check its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: impressions file not found")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    check_columns(pf.schema_arrow, IMPRESSION_COLUMNS, path)
    return pf


def log_columns(rb, path: Path, columns=LOG_COLUMNS) -> dict[str, np.ndarray]:
    """Numpy columns of one record batch of impressions, checked: no nulls, positions
    ``>= 0``, ``clicked`` in {0, 1}. Errors name the file and the column."""
    cols = {}
    for name in columns:
        arr = rb.column(name)
        if arr.null_count:
            raise InputError(
                f"{path}: column {name!r} has {arr.null_count} null/NaN values in a batch; "
                "impressions must be complete"
            )
        cols[name] = arr.to_numpy()
    if "position" in cols and cols["position"].size and cols["position"].min() < 0:
        raise InputError(
            f"{path}: column 'position' has negative values (minimum {cols['position'].min()})"
        )
    if "clicked" in cols and ((cols["clicked"] != 0) & (cols["clicked"] != 1)).any():
        bad = cols["clicked"][(cols["clicked"] != 0) & (cols["clicked"] != 1)][0]
        raise InputError(f"{path}: column 'clicked' must be 0 or 1, found {bad}")
    return cols


def read_user_ids(world: World) -> np.ndarray:
    """User ids of ``users.parquet`` (the World object keeps only the affinity column)."""
    import pyarrow.parquet as pq

    path = world.root / "users.parquet"
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    schema = pq.read_schema(path)
    if "user_id" not in schema.names:
        raise InputError(f"{path}: missing column 'user_id'")
    return pq.read_table(path, columns=["user_id"]).column("user_id").to_numpy().astype(np.int64)


def pop_bucket_edges(n_buckets: int) -> list[int]:
    """Edges 1, 2, 4, ...: bucket 0 = never shown, bucket b = counts in [2^(b-1), 2^b)."""
    return [2**i for i in range(n_buckets - 1)]


def compute_train_stats(
    world: World, emb: Embeddings, cfg, train_path: Path | None = None
) -> TrainStats:
    """Two streaming passes over the training logs: time span, then counts for the fit part.

    Also validates every row: known item, item and query vectors present.
    """
    train_path = Path(train_path or world.impressions_path("train"))
    pf = open_log(train_path)
    if pf.metadata.num_rows == 0:
        raise InputError(f"{train_path}: the training split is empty; nothing to train on")
    t_min, t_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for rb in pf.iter_batches(batch_size=cfg.read_rows, columns=["timestamp"]):
        ts = log_columns(rb, train_path, ["timestamp"])["timestamp"]
        if ts.size:
            t_min, t_max = min(t_min, int(ts.min())), max(t_max, int(ts.max()))
    if cfg.validation_share > 0:
        val_start = t_max - int(math.floor(cfg.validation_share * (t_max - t_min)))
        val_start = max(val_start, t_min + 1)  # the fit part is never empty by construction
    else:
        val_start = t_max + 1

    items = IdIndex(world.items["item_id"])
    n_items = len(items)
    cats = np.asarray(world.items["category"], dtype=np.int64)
    n_cat = world.n_categories
    world_users = read_user_ids(world)
    users = IdIndex(world_users)
    item_counts = np.zeros(n_items, dtype=np.int64)
    user_seen = np.zeros(len(users), dtype=bool)
    clicks_uc = np.zeros((len(users), n_cat), dtype=np.float64)
    clicks_c = np.zeros(n_cat, dtype=np.float64)
    n_fit = n_val = n_val_clicks = n_fit_clicks = 0
    for rb in pf.iter_batches(batch_size=cfg.read_rows, columns=LOG_COLUMNS):
        cols = log_columns(rb, train_path)
        item_rows = items.rows(cols["item_id"])
        check_rows(item_rows, emb, cols, train_path)
        fit = cols["timestamp"] < val_start
        clicked = cols["clicked"].astype(bool)
        n_fit += int(fit.sum())
        n_val += int((~fit).sum())
        n_val_clicks += int(clicked[~fit].sum())
        n_fit_clicks += int(clicked[fit].sum())
        ir, cl = item_rows[fit], clicked[fit]
        item_counts += np.bincount(ir, minlength=n_items)
        urows = users.rows(cols["user_id"][fit])
        known = urows >= 0
        user_seen[urows[known]] = True
        c = cats[ir]
        sel = cl & known
        np.add.at(clicks_uc, (urows[sel], c[sel]), 1.0)
        clicks_c += np.bincount(c[cl], minlength=n_cat)
    if n_fit == 0:
        raise InputError(
            f"{train_path}: no training impressions before the validation cut "
            f"(timestamp {val_start}); lower validation_share"
        )
    if cfg.validation_share > 0 and (n_val == 0 or n_val_clicks in (0, n_val)):
        raise InputError(
            f"{train_path}: the validation part (last {cfg.validation_share:.0%} "
            f"of training time, timestamp >= {val_start}) has {n_val} impressions "
            f"and {n_val_clicks} clicks; AUC needs both classes: change "
            "validation_share or set it to 0"
        )
    if n_fit_clicks == 0:
        raise InputError(f"{train_path}: no clicks in the training logs; nothing to learn")

    prior = (clicks_c + 1.0) / (clicks_c.sum() + n_cat)
    vocab_rows = np.flatnonzero(user_seen)
    alpha = cfg.affinity_smoothing
    uc = clicks_uc[vocab_rows]
    aff = (uc + alpha * prior) / (uc.sum(axis=1, keepdims=True) + alpha)
    affinity = np.vstack([prior[None, :], aff]).astype(np.float32)

    edges = pop_bucket_edges(cfg.pop_buckets)
    pop = np.searchsorted(np.asarray(edges), item_counts, side="right")
    n_users_vocab = vocab_rows.size + 1
    vocabs = [
        ("user", n_users_vocab),
        ("hour", 24),
        ("day", 7),
        ("position", cfg.max_position + 1),
        ("category", n_cat),
        ("pop_bucket", cfg.pop_buckets),
    ]
    if cfg.use_item_id:
        vocabs.append(("item", n_items))
    fields, off = [], 0
    for name, v in vocabs:
        fields.append(FieldSpec(name, int(v), off))
        off += int(v)
    fmap = FeatureMap(
        fields=fields,
        visual_dim=emb.dim,
        n_categories=n_cat,
        max_position=cfg.max_position,
        pop_edges=edges,
        t_min=int(t_min),
        t_max=int(t_max),
        val_start=int(val_start),
        item_ids=items.ids.tolist(),
        item_category=cats.tolist(),
        item_pop_bucket=pop.astype(int).tolist(),
        user_ids=world_users[vocab_rows].tolist(),
    )
    return TrainStats(fmap, affinity, item_counts, n_fit, n_val, n_val_clicks, n_fit_clicks)


def check_rows(item_rows: np.ndarray, emb: Embeddings, cols: dict, log_path: Path) -> np.ndarray:
    """Raise when a log row names an unknown item or lacks an item/query vector."""
    if (item_rows < 0).any():
        bad = cols["item_id"][np.flatnonzero(item_rows < 0)[0]]
        raise InputError(f"{log_path}: item_id {bad} is not in the world catalog (items.parquet)")
    missing = ~emb.item_has_vector[item_rows]
    if missing.any():
        bad = cols["item_id"][np.flatnonzero(missing)[0]]
        raise InputError(
            f"{emb.items_path}: no vector for item_id {bad}, which appears in "
            f"{log_path} ({int(missing.sum())} rows); re-run 'visctr embed'"
        )
    q = emb.query_ids.rows(cols["query_id"])
    if (q < 0).any():
        bad = cols["query_id"][np.flatnonzero(q < 0)[0]]
        raise InputError(
            f"{emb.queries_path}: no vector for query_id {bad}, which appears in "
            f"{log_path}; re-run 'visctr embed'"
        )
    return q


class Encoder:
    """Turns Arrow record batches of impressions into packed index tensors."""

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
        return len(self.names) + N_EXTRA

    def encode(self, cols: dict[str, np.ndarray], log_path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(index int64 [B, F+4], labels float32 [B])`` for numpy columns of the logs."""
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
        n_f = len(self.names)
        out = np.empty((item.shape[0], n_f + N_EXTRA), dtype=np.int64)
        for j, name in enumerate(self.names):
            np.add(values[name], self.offsets[j], out=out[:, j])
        out[:, n_f] = user
        out[:, n_f + 1] = item
        out[:, n_f + 2] = query
        out[:, n_f + 3] = cat
        return out, cols["clicked"].astype(np.float32)
