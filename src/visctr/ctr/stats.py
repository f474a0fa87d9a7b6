"""Statistics of the training logs: the ``FeatureMap``, user affinity and item popularity.

They use the *fit* part of the training split only, i.e. without its last
``validation_share`` of time, so validation clicks never leak into features. Affinity is
computed from training clicks, smoothed towards the global click distribution over
categories: ``(clicks[u, c] + α·prior[c]) / (clicks[u] + α)``; popularity is the item's
fit-part impression count, bucketed on a log2 scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visctr.ctr.feature_map import FeatureMap, FieldSpec
from visctr.ctr.visual import Embeddings, check_rows
from visctr.errors import InputError
from visctr.ids import IdIndex
from visctr.world.logs import LOG_COLUMNS, log_columns, open_log
from visctr.world.store import World


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
    # fit-part impressions and clicks per position (clipped at max_position): for IPS
    position_impressions: np.ndarray | None = None
    position_clicks: np.ndarray | None = None


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
    pos_imp = np.zeros(cfg.max_position + 1, dtype=np.int64)
    pos_clk = np.zeros(cfg.max_position + 1, dtype=np.int64)
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
        pos = np.clip(cols["position"][fit], 0, cfg.max_position)
        pos_imp += np.bincount(pos, minlength=cfg.max_position + 1)
        pos_clk += np.bincount(pos[cl], minlength=cfg.max_position + 1)
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
    return TrainStats(
        fmap, affinity, item_counts, n_fit, n_val, n_val_clicks, n_fit_clicks, pos_imp, pos_clk
    )
