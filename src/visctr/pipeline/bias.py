"""``results.json["representation_bias"]``: how far each encoder's space (and S3's
debiased vectors) drifts from the S1 reference, for head and for tail items.

Per encoder seed, every encoder recipe's item vectors against the S1 ones
(``visctr.eval.bias.representation_bias``: neighbour overlap@20 for head and tail items,
its Spearman correlation with log(1 + training impressions), and a held-out probe's AUC
for head vs tail); per CTR seed, the same for each S3-style method's vectors: the gated
fusion retrieval uses (``<method> gated``) and the DebiasNet output alone
(``<method> debiased``). Head items: S3's own rule, the top ``ctr.debias.head_share`` of
items by training-split impressions (``visctr.world.head_tail``).

``results.json["selection_bias"]``: the selection-bias gap Δ of each space against S1 on
the uniform retrieval queries (``visctr.eval.bias.selection_bias_gap``): per encoder
(ResNet-C, S2, S1+S2; one per encoder seed) and per S3-style method's retrieval space
(S1+S2+H, S1+S2+D; one per encoder seed × CTR seed). Head/tail: the world's
``items.is_head``, as ``head_hr@10``/``longtail_hr@10`` use.
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


REFERENCE_METHOD = "S1"  # the method that retrieves with the reference's embeddings
SELECTION_FIELDS = (
    "delta",
    "gap",
    "gap_ref",
    "head_hr",
    "tail_hr",
    "head_hr_ref",
    "tail_hr_ref",
    "tail_top10_head_share_diff",
)


def selection_spaces(cfg: Any, ctr_seed: int) -> dict[str, str]:
    """The retrieval spaces whose gap is measured, ``{method name: representation_bias
    key}``: for the first CTR seed each encoder but S1's (named by the first method that
    uses it), and for every CTR seed each S3-style method (it retrieves through its head)."""
    out = {}
    if ctr_seed == 0:
        for r in encoder_order():
            users = [n for n, m in METHODS.items() if m.encoder == r.name]
            if r.name != REFERENCE and users:
                out[users[0]] = r.name
    for name, m in METHODS.items():
        debias = CTR_VARIANTS[m.ctr](cfg.ctr).debias
        if debias.enabled:  # the space its retrieval uses: the gated or the debiased vector
            out[name] = f"{name} {debias.retrieval_vector}"
    return out


def target_rows(world) -> np.ndarray:
    """Each labelled retrieval query's target item row, in ``retrieval_targets`` order (the
    order of ``evaluate_retrieval``'s ranked rows)."""
    from visctr.eval.retrieval import retrieval_targets
    from visctr.ids import IdIndex

    _, targets = retrieval_targets(world)
    return IdIndex(world.items["item_id"]).rows(targets, strict=True, what="target_item_id")


def selection_rows(
    world, tops: dict[str, np.ndarray], spaces: dict[str, str], seed: int, n_boot: int = 2000
) -> dict[str, dict[str, Any]]:
    """Δ of each space in ``spaces`` against S1 from the ranked item rows ``tops`` (method
    name -> ``[Q, >=10]``, the retrieval queries in ``retrieval_targets`` order); the
    bootstrap is seeded with ``seed``. Raises ``InputError`` without head or tail targets."""
    from visctr.eval.bias import selection_bias_gap

    rows = target_rows(world)
    is_head = np.asarray(world.items["is_head"], dtype=bool)

    def per_query(top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top10 = top[:, :10]
        return (top10 == rows[:, None]).any(1), is_head[top10].mean(1)

    ref_hits, ref_share = per_query(tops[REFERENCE_METHOD])
    out = {}
    for name, bias_key in spaces.items():
        hits, share = per_query(tops[name])
        r = selection_bias_gap(
            hits, ref_hits, is_head[rows], share, ref_share, n_boot=n_boot, seed=seed
        )
        out[name] = {**r, "n_queries": len(rows), "representation_bias": bias_key}
    return out


def aggregate_selection(
    rows: list[dict[str, dict[str, Any]]], encoder_seeds: list[int]
) -> dict[str, dict[str, Any]]:
    """Per space: each of ``SELECTION_FIELDS`` as ``{mean, std, per_seed}`` over its
    replicates, Δ also with ``per_encoder_seed`` (CTR seeds averaged) and ``ci95``, a t
    interval over those means; the per-replicate bootstrap CIs as ``ci95_per_seed``.
    ``encoder_seeds``: the encoder seed of each entry of ``rows``."""
    from visctr.pipeline.results import INTERVAL, group_means, t_interval

    names: list[str] = []
    for r in rows:
        names += [n for n in r if n not in names]
    out = {}
    for n in names:
        mine = [(r[n], s) for r, s in zip(rows, encoder_seeds, strict=True) if n in r]
        entry: dict[str, Any] = {
            f: aggregate([r.get(f, np.nan) for r, _ in mine]) for f in SELECTION_FIELDS
        }
        means, _ = group_means([r["delta"] for r, _ in mine], [s for _, s in mine])
        entry["delta"].update(per_encoder_seed=means, ci95=t_interval(means), interval=INTERVAL)
        entry["ci95_per_seed"] = [r["ci95"] for r, _ in mine]
        entry["n_queries"] = mine[0][0]["n_queries"]
        entry["representation_bias"] = mine[0][0]["representation_bias"]
        out[n] = entry
    return out


__all__ = [
    "aggregate_bias",
    "aggregate_selection",
    "representation_rows",
    "selection_rows",
    "selection_spaces",
    "training_impressions",
]
