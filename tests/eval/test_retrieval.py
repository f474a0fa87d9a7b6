"""Retrieval metrics against brute force; ``evaluate_retrieval`` on the tiny world, with and
without the S3 debias transform."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.errors import InputError
from visctr.eval.retrieval import (
    evaluate_retrieval,
    evaluate_vectors,
    retrieval_inputs,
    retrieval_metrics,
    search,
)


def _brute(q, items, targets, cats, head, k):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    it = items / np.linalg.norm(items, axis=1, keepdims=True)
    out = {"hit": [], "cat": []}
    for i in range(len(q)):
        s = it @ qn[i]
        top = sorted(range(len(items)), key=lambda j: -s[j])[:k]
        out["hit"].append(targets[i] in top)
        out["cat"].append(np.mean([cats[j] == cats[targets[i]] for j in top]))
    return out


@given(st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_retrieval_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, nq, d = 60, 25, 8
    items = rng.normal(size=(n, d)).astype(np.float32)
    targets = rng.integers(0, n, nq)
    q = items[targets] + rng.normal(scale=1.0, size=(nq, d)).astype(np.float32)
    cats = rng.integers(0, 4, n)
    head = rng.random(n) < 0.3
    m, top = evaluate_vectors(q, targets, items, cats, head, ks=(1, 10))
    ref = _brute(q, items, targets, cats, head, 10)
    hit = np.array(ref["hit"])
    assert np.isclose(m["hr@10"], hit.mean())
    assert np.isclose(m["category_recall@10"], np.mean(ref["cat"]), atol=1e-6)
    th = head[targets]
    if (~th).any():
        assert np.isclose(m["longtail_hr@10"], hit[~th].mean())
    if th.any():
        assert np.isclose(m["head_hr@10"], hit[th].mean())
    assert 0 <= m["hr@1"] <= m["hr@10"] <= 1


def test_search_is_exact():
    items = np.eye(5, dtype=np.float32)
    scores, idx = search(items[[3, 1]] * 2, items, 2)
    assert idx[:, 0].tolist() == [3, 1]
    assert np.allclose(scores[:, 0], 1)


def test_metrics_on_perfect_ranking():
    top = np.array([[0, 1], [1, 0]])
    m = retrieval_metrics(top, np.array([0, 1]), np.array([0, 1]), np.array([True, False]), (1,))
    assert m["hr@1"] == 1 and m["head_hr@10"] == 1 and m["longtail_hr@10"] == 1


# ---- evaluate_retrieval on the tiny world ----------------------------------------------


@pytest.fixture(scope="module")
def random_debias(tmp_path_factory) -> Path:
    """An exported debias head that is far from the identity."""
    from visctr.s3.artifact import export_debias
    from visctr.s3.config import DebiasConfig
    from visctr.s3.net import DebiasHead

    torch.manual_seed(0)
    head = DebiasHead(16, 32)
    torch.nn.init.normal_(head.net.fc2.weight, std=1.0)
    path = tmp_path_factory.mktemp("debias") / "debias.pt"
    export_debias(head, DebiasConfig(hidden=32), 16, path)
    return path


def test_evaluate_retrieval_matches_a_brute_force_search(tiny_world, tiny_embeddings):
    m, top = evaluate_retrieval(tiny_world, tiny_embeddings)
    q, items, targets = retrieval_inputs(tiny_world, tiny_embeddings)
    assert len(q) == len(tiny_world.query_rows("retrieval")) == len(top)
    want = tiny_world.queries["target_item_id"][tiny_world.query_rows("retrieval")]
    assert np.array_equal(tiny_world.items["item_id"][targets], want)
    ref = _brute(q, items, targets, tiny_world.items["category"], None, 10)
    assert m["hr@10"] == pytest.approx(np.mean(ref["hit"]))
    assert m["category_recall@10"] == pytest.approx(np.mean(ref["cat"]), abs=1e-6)


def test_retrieval_goes_through_the_debias_transform(tiny_world, tiny_embeddings, random_debias):
    """S1+S2+D's retrieval is the search over debiased query and item vectors: a different
    ranking than the raw vectors, the same as searching the mapped vectors directly."""
    from visctr.s3.artifact import debias_transform

    t = debias_transform(random_debias)
    m_raw, top_raw = evaluate_retrieval(tiny_world, tiny_embeddings)
    m, top = evaluate_retrieval(tiny_world, tiny_embeddings, t)
    assert (top != top_raw).any(axis=1).mean() > 0.5  # most rankings change
    assert m != m_raw
    q, items, targets = retrieval_inputs(tiny_world, tiny_embeddings)
    cats, head = tiny_world.items["category"], tiny_world.items["is_head"]
    m_ref, top_ref = evaluate_vectors(t(q), targets, t(items), cats, head)
    assert np.array_equal(top, top_ref) and m == m_ref
    with pytest.raises(TypeError, match="debias_transform"):
        evaluate_retrieval(tiny_world, tiny_embeddings, random_debias)  # a path, not a function


def test_missing_target_item_names_the_id(tiny_world, tiny_embeddings):
    import dataclasses

    queries = dict(tiny_world.queries)
    queries["target_item_id"] = queries["target_item_id"].copy()
    row = tiny_world.query_rows("retrieval")[3]
    queries["target_item_id"][row] = 10**9
    world = dataclasses.replace(tiny_world, queries=queries)
    with pytest.raises(InputError, match=r"queries\.parquet: target_item_id 1000000000 not found"):
        evaluate_retrieval(world, tiny_embeddings)
