import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from visctr.eval.retrieval import evaluate_vectors, retrieval_metrics, search


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
