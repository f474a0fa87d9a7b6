"""``results.json["representation_bias"]``: how far each encoder's space (and S3's
debiased vectors) drifts from the S1 reference, for head and for tail items.

Per encoder seed, every encoder recipe's item vectors against the S1 ones
(``visctr.eval.bias.representation_bias``: neighbour overlap@20 for head and tail items,
its Spearman correlation with log(1 + training impressions), and a held-out probe's AUC
for head vs tail); per CTR seed, the same for each S3-style method's vectors: the gated
fusion retrieval uses (``<method> gated``) and the DebiasNet output alone
(``<method> debiased``). Head items: S3's own rule, the top ``ctr.debias.head_share`` of
items by training-split impressions (``visctr.world.head_tail``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visctr.pipeline.layout import RunLayout
from visctr.pipeline.methods import CTR_VARIANTS, METHODS, encoder_order
from visctr.pipeline.results import aggregate

REFERENCE = "s1"  # the encoder recipe whose space is the unbiased reference
FIELDS = ("overlap_head", "overlap_tail", "overlap_vs_impressions", "exposure_probe_auc")


def training_impressions(world) -> np.ndarray:
    """Impressions per item row in the training split (int64)."""
    import pyarrow.parquet as pq

    from visctr.ids import IdIndex

    path = world.impressions_path("train")
    ids = pq.read_table(path, columns=["item_id"]).column("item_id").to_numpy()
    item_ids = np.asarray(world.items["item_id"], dtype=np.int64)
    rows = IdIndex(item_ids).rows(ids)
    return np.bincount(rows[rows >= 0], minlength=item_ids.size).astype(np.int64)


def _items(emb_dir, world) -> tuple[np.ndarray, np.ndarray]:
    from visctr.ctr.visual import load_embeddings

    emb = load_embeddings(emb_dir, world, queries=False)
    return emb.item_vectors, emb.item_has_vector


def representation_rows(
    layout: RunLayout, world, cfg: Any, seed: int, ctr_seed: int, k: int = 20
) -> dict[str, dict[str, float]]:
    """The representation-bias rows of encoder seed ``seed`` and CTR seed ``ctr_seed``: the
    encoders' (for the first CTR seed only: they do not depend on it) and the S3 heads'."""
    from visctr.eval.bias import representation_bias
    from visctr.s3.artifact import debias_transform
    from visctr.world.head_tail import head_mask

    counts = training_impressions(world)
    is_head = head_mask(counts, cfg.ctr.debias.head_share)
    ref, ref_has = _items(layout.embeddings(seed, REFERENCE), world)
    spaces: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if ctr_seed == 0:
        for r in encoder_order():
            spaces[r.name] = _items(layout.embeddings(seed, r.name), world)
    for m in METHODS.values():
        if not CTR_VARIANTS[m.ctr](cfg.ctr).debias.enabled:
            continue
        v, has = _items(layout.embeddings(seed, m.encoder), world)
        path = layout.ctr(seed, m.slug, ctr_seed) / "debias.pt"
        for mode in ("gated", "debiased"):
            ids = np.asarray(world.items["item_id"])
            spaces[f"{m.name} {mode}"] = debias_transform(path, mode).items(v, ids), has
    out = {}
    for name, (v, has) in spaces.items():
        row = representation_bias(v, ref, counts, is_head, has & ref_has, k=k, seed=seed)
        out[name] = {f: row[f] for f in FIELDS}
    return out


def aggregate_bias(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per space and measure ``{mean, std, per_seed}`` over the replicates that have it
    (encoders: one per encoder seed; S3 heads: one per encoder seed × CTR seed)."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r if n not in names]
    return {n: {f: aggregate([r[n][f] for r in rows if n in r]) for f in FIELDS} for n in names}


__all__ = ["aggregate_bias", "representation_rows", "training_impressions"]
