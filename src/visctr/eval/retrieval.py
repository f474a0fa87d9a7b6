"""Retrieval metrics: query photo → catalog by cosine similarity, exact search with FAISS.

- ``hr@K``: share of queries whose target item is in the top K. The targets are the
  world's labelled retrieval queries, or, in a world without labels, the items clicked
  for each test query (``retrieval_targets``).
- ``longtail_hr@10`` / ``head_hr@10``: HR@10 over queries whose target is a tail / head
  item (head = top 20% of items by training impressions; never-shown items are tail).
- ``category_recall@10``: mean share of the top 10 that has the target's category.

The functions up to ``evaluate_vectors`` are pure (arrays in, metrics out);
``evaluate_retrieval`` reads a method's embeddings and applies an optional transform
(the S3 debias network) that the caller supplies: eval never imports ctr.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from visctr.ids import IdIndex


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def search(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of L2-normalised vectors: ``(scores, indices)``."""
    import faiss

    q, it = normalize(queries), normalize(items)
    index = faiss.IndexFlatIP(it.shape[1])
    if _faiss_gpus(faiss):  # faiss-gpu installed and a GPU seen: the same exact search there
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(it)
    scores, idx = index.search(q, min(k, len(it)))
    return scores, idx


def _faiss_gpus(faiss) -> int:
    """GPUs the installed FAISS can use (0 for the CPU build, or with ``VISCTR_FAISS_GPU=0``)."""
    import os

    if os.environ.get("VISCTR_FAISS_GPU") == "0" or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # a build without GPU support may still define the function
        return 0


def retrieval_metrics(
    top: np.ndarray,
    target_rows: np.ndarray,
    item_categories: np.ndarray,
    is_head: np.ndarray,
    ks: tuple[int, ...] = (1, 10, 50),
) -> dict[str, float]:
    """Metrics from ranked item rows ``top`` ``[Q, >=max(ks)]`` and each query's target row."""
    if len(target_rows) == 0:
        raise ValueError("no retrieval queries")
    hits = top == target_rows[:, None]
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = float(hits[:, :k].any(1).mean())
    hit10 = hits[:, :10].any(1)
    head = is_head[target_rows]
    out["longtail_hr@10"] = float(hit10[~head].mean()) if (~head).any() else float("nan")
    out["head_hr@10"] = float(hit10[head].mean()) if head.any() else float("nan")
    same = item_categories[top[:, :10]] == item_categories[target_rows][:, None]
    out["category_recall@10"] = float(same.mean())
    return out


def evaluate_vectors(
    query_vecs: np.ndarray,
    target_rows: np.ndarray,
    item_vecs: np.ndarray,
    item_categories: np.ndarray,
    is_head: np.ndarray,
    ks: tuple[int, ...] = (1, 10, 50),
) -> tuple[dict[str, float], np.ndarray]:
    """Search, then :func:`retrieval_metrics`. Returns the metrics and the top rows."""
    _, top = search(query_vecs, item_vecs, max(ks))
    return retrieval_metrics(top, target_rows, item_categories, is_head, ks), top


def retrieval_inputs(
    world, embeddings_dir: Path, split: str = "retrieval"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(query vectors, item vectors, target item rows)`` of one method's embeddings on the
    world's ``split`` queries; items in world row order. Errors name the missing id."""
    from visctr.embeddings import align, read_embeddings

    d = Path(embeddings_dir)
    item_ids, item_vecs = read_embeddings(d / "items.parquet", "item_id")
    query_ids, query_vecs = read_embeddings(d / "queries.parquet", "query_id")
    if item_vecs.shape[1] != query_vecs.shape[1]:
        raise ValueError(
            f"{d}: item vectors are {item_vecs.shape[1]}-d but query vectors "
            f"{query_vecs.shape[1]}-d"
        )
    items = align(item_ids, item_vecs, world.items["item_id"], d / "items.parquet")
    qids, target_ids = retrieval_targets(world, split)
    queries = align(query_ids, query_vecs, qids, d / "queries.parquet", "query_id")
    target_rows = IdIndex(world.items["item_id"]).rows(
        target_ids,
        strict=True,
        what="target_item_id",
        path=Path(world.root) / "queries.parquet",
        hint="; every target must be a catalog item (items.parquet)",
    )
    return queries, items, target_rows


def retrieval_targets(world, split: str = "retrieval") -> tuple[np.ndarray, np.ndarray]:
    """``(query ids, target item ids)`` of the retrieval evaluation, one row per pair.

    The world's labelled ``split`` queries when it has them. A world without labels (an
    imported one with no ``--retrieval`` file) uses its test queries instead, each with
    every item clicked for it as a target: one row per (query, clicked item)."""
    rows = world.query_rows(split)
    if len(rows) or split != "retrieval":
        return world.queries["query_id"][rows], world.queries["target_item_id"][rows]
    test = world.read_impressions("test")
    clicked = test["clicked"].astype(bool)
    pairs = np.unique(np.stack([test["query_id"][clicked], test["item_id"][clicked]], 1), axis=0)
    if not len(pairs):
        raise ValueError(
            f"{world.root}: no labelled retrieval queries and no clicks in the test log: "
            "nothing to measure retrieval on"
        )
    return pairs[:, 0], pairs[:, 1]


def evaluate_retrieval(
    world,
    embeddings_dir: Path,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    split: str = "retrieval",
) -> tuple[dict[str, float], np.ndarray]:
    """Retrieval metrics of one method's embeddings on the world's uniform retrieval queries,
    and the ranked item rows ``[Q, 50]``.

    ``transform`` maps query and item vectors before the search (one ``[n, D]`` array to
    another): S1+S2+D passes its debias network,
    ``visctr.s3.debias_transform(model_dir / "debias.pt")``, as it does at serving time.
    """
    if transform is not None and not callable(transform):
        raise TypeError(
            f"transform must be a function of the vectors, got {type(transform).__name__}; "
            "for a debias.pt pass visctr.s3.debias_transform(path)"
        )
    queries, items, target_rows = retrieval_inputs(world, embeddings_dir, split)
    if hasattr(transform, "items"):  # a DebiasTransform: items by id, queries apart
        ids = np.asarray(world.items["item_id"])
        items, queries = transform.items(items, ids), transform.queries(queries)
    elif transform is not None:
        items, queries = transform(items), transform(queries)
    return evaluate_vectors(
        queries, target_rows, items, world.items["category"], world.items["is_head"]
    )
