"""CTR evaluation: a trained model's metrics on the logged test split and on the unbiased
random-exposure set (DESIGN §4); the metric functions themselves are
:mod:`visctr.metrics`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visctr.ctr import predict_ctr
from visctr.ids import IdIndex
from visctr.metrics import auc, ctr_metrics
from visctr.world.store import World

__all__ = ["evaluate_ctr", "random_exposure_by_category"]


def random_exposure_by_category(world: World, pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Random-exposure AUC split by whether the shown item has the query target's category.

    ``pred``: ``predict_ctr`` output for the ``random`` split. The target is the
    simulator's hidden ground truth (``queries.target_item_id``), used here for analysis
    only. With items drawn uniformly, same-category pairs are few but take most clicks,
    so the overall AUC mostly measures telling categories apart; the same-category AUC
    is where fine-grained likeness decides. Also returns those pairs' share of
    impressions and of clicks.
    """
    items = IdIndex(world.items["item_id"])
    cats = np.asarray(world.items["category"], dtype=np.int64)
    qidx = IdIndex(world.queries["query_id"])
    targets = np.asarray(world.queries["target_item_id"], dtype=np.int64)
    logs = world.impressions_path("random")
    q = qidx.rows(pred["query_id"], strict=True, what="query_id", path=logs)
    t = items.rows(
        targets[q], strict=True, what="target_item_id", path=world.root / "queries.parquet"
    )
    i = items.rows(pred["item_id"], strict=True, what="item_id", path=logs)
    same = cats[i] == cats[t]
    y, p = pred["labels"], pred["probs"]
    clicks = max(int(y.sum()), 1)
    return {
        "auc_random_same_category": auc(y[same], p[same]) if same.any() else float("nan"),
        "auc_random_other_category": auc(y[~same], p[~same]) if (~same).any() else float("nan"),
        "random_same_category_share": float(same.mean()),
        "random_same_category_click_share": float(y[same].sum() / clicks),
    }


def evaluate_ctr(
    model_dir: Path, world: World, embeddings: Path, by_category: bool = False
) -> dict[str, float]:
    """``auc, logloss, gauc, auc_tail`` on the test split and ``auc_random_exposure``.

    ``by_category`` adds ``random_exposure_by_category``'s four figures (they need the
    simulator's targets). Without a random-exposure log (an imported world that has none)
    ``auc_random_exposure`` is NaN and the by-category figures are absent.

    ``auc_tail``: test impressions of tail items (``world.items['is_head'] == False``).
    Single-class cases give NaN (see ``visctr.metrics``). Scores are at position 0,
    so ``logloss`` on logged data reflects top-slot CTR (it over-predicts lower slots);
    AUC and gAUC compare relevance and are unaffected by that calibration offset.
    """
    test = predict_ctr(model_dir, world, embeddings, "test")
    head_ids = np.asarray(world.items["item_id"])[np.asarray(world.items["is_head"], dtype=bool)]
    is_tail = ~np.isin(test["item_id"], head_ids)
    m = ctr_metrics(test["labels"], test["probs"], test["query_id"], is_tail)
    out = {
        "auc": m["auc"],
        "logloss": m["logloss"],
        "gauc": m["gauc"],
        "auc_random_exposure": float("nan"),
        "auc_tail": m["auc_tail"],
    }
    if world.has_random_exposure:
        rnd = predict_ctr(model_dir, world, embeddings, "random")
        out["auc_random_exposure"] = auc(rnd["labels"], rnd["probs"])
        if by_category:
            out.update(random_exposure_by_category(world, rnd))
    return out
