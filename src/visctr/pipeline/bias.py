"""``results.json["representation_bias"]``: how far each encoder's space (and S3's
debiased vectors) drifts from the S1 reference, for head and for tail items.

Per encoder seed, every encoder recipe's item vectors against the S1 ones
(``visctr.eval.bias.representation_bias``: neighbour overlap@20 for head and tail items,
its Spearman correlation with log(1 + training impressions), and a held-out probe's AUC
for head vs tail); per CTR seed, the same for each S3-style method's vectors: the gated
fusion retrieval uses (``<method> gated``) and the DebiasNet output alone
(``<method> debiased``). Head items: S3's own rule, the top ``ctr.debias.head_share`` of
items by training-split impressions (``visctr.world.head_tail``).

``results.json["ctr_head_tail"]``: the CTR side of the bias. Per method, its CTR model's
random-exposure AUC and calibration on head and on tail items
(``visctr.eval.bias.ctr_head_tail``), and its head − tail AUC gap against S1+S2's own
(``gap_delta``, paired bootstrap CI over random-exposure queries per replicate, a t interval
over encoder seeds); ``S1+S2 item-id`` is S1+S2's CTR model with item-id features
(``ctr.use_item_id``), trained for this table only: the gap per-item parameters open.

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


CTR_REFERENCE = "S1+S2"  # the method whose CTR head − tail gap the others are measured against
ITEM_ID = "S1+S2 item-id"  # the reference's CTR model with item-id features
ITEM_ID_SLUG = "s1_s2_item_id"
CTR_FIELDS = (
    "auc_head",
    "auc_tail",
    "gap",
    "calibration_head",
    "calibration_tail",
    "calibration_tail_over_head",
    "gap_delta",
)
CTR_BOOT = 200  # bootstrap resamples of the gap's CI per replicate


def item_id_config(ctr_cfg: Any) -> Any:
    """The CTR config of the item-id model: the reference's, with item-id features."""
    import dataclasses

    ref = CTR_VARIANTS[METHODS[CTR_REFERENCE].ctr](ctr_cfg)
    return dataclasses.replace(ref, use_item_id=True)


def ctr_head_tail_rows(
    layout: RunLayout, world, seed: int, ctr_seed_index: int, ctr_seed: int
) -> dict[str, dict[str, Any]]:
    """``ctr_head_tail`` of every method's CTR model (and the item-id model) of encoder
    seed ``seed`` and CTR seed ``ctr_seed_index`` on the random-exposure log, the gap
    against S1+S2's CTR model; the bootstrap is seeded with ``ctr_seed``."""
    from visctr.ctr import predict_ctr
    from visctr.eval.bias import ctr_head_tail
    from visctr.ids import IdIndex

    models = {
        name: (layout.ctr(seed, m.slug, ctr_seed_index), layout.embeddings(seed, m.encoder))
        for name, m in METHODS.items()
    }
    ref_enc = layout.embeddings(seed, METHODS[CTR_REFERENCE].encoder)
    models[ITEM_ID] = layout.ctr(seed, ITEM_ID_SLUG, ctr_seed_index), ref_enc
    preds = {n: predict_ctr(d, world, e, "random") for n, (d, e) in models.items()}
    ref = preds[CTR_REFERENCE]
    is_head = np.asarray(world.items["is_head"], dtype=bool)
    head = is_head[IdIndex(world.items["item_id"]).rows(ref["item_id"], strict=True)]
    out = {}
    for name, p in preds.items():
        if not (np.array_equal(p["query_id"], ref["query_id"]) and
                np.array_equal(p["item_id"], ref["item_id"])):  # fmt: skip
            raise AssertionError(f"{name}: random-exposure predictions out of order")
        if name == CTR_REFERENCE:  # against itself: 0 by definition, no bootstrap
            r = ctr_head_tail(p["labels"], p["probs"], head, p["query_id"])
            r.update(gap_ref=r["gap"], gap_delta=0.0, ci95=[0.0, 0.0], n_boot=0)
        else:
            r = ctr_head_tail(
                p["labels"], p["probs"], head, p["query_id"], ref["probs"], n_boot=CTR_BOOT,
                seed=ctr_seed,
            )  # fmt: skip
        out[name] = r
    return out


def aggregate_ctr_head_tail(
    rows: list[dict[str, dict[str, Any]]], encoder_seeds: list[int]
) -> dict[str, dict[str, Any]]:
    """Per method: each of ``CTR_FIELDS`` as ``{mean, std, per_seed}`` over the replicates;
    ``gap_delta`` also with ``per_encoder_seed`` (CTR seeds averaged) and ``ci95``, a t
    interval over those means; the per-replicate bootstrap CIs as ``ci95_per_seed``."""
    from visctr.pipeline.results import INTERVAL, group_means, t_interval

    out = {}
    for n in rows[0] if rows else []:
        mine = [r[n] for r in rows]
        entry: dict[str, Any] = {f: aggregate([r[f] for r in mine]) for f in CTR_FIELDS}
        means, _ = group_means([r["gap_delta"] for r in mine], encoder_seeds)
        entry["gap_delta"].update(per_encoder_seed=means, ci95=t_interval(means), interval=INTERVAL)
        entry["ci95_per_seed"] = [r["ci95"] for r in mine]
        entry["n_head"], entry["n_tail"] = mine[0]["n_head"], mine[0]["n_tail"]
        out[n] = entry
    return out


__all__ = [
    "aggregate_bias",
    "aggregate_ctr_head_tail",
    "ctr_head_tail_rows",
    "aggregate_selection",
    "representation_rows",
    "selection_rows",
    "selection_spaces",
    "training_impressions",
]
