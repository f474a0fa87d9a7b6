"""S3 pieces: gate formula, mining vs exhaustive search, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visctr.errors import InputError
from visctr.s3.artifact import apply_debias, export_debias, load_debias
from visctr.s3.config import DebiasConfig
from visctr.s3.mining import mine_triplets
from visctr.s3.net import DebiasHead, DebiasNet, Gate
from visctr.world.head_tail import head_mask


def test_gate_is_the_convex_vector_mix():
    torch.manual_seed(0)
    gate = Gate(4)
    v, d = torch.randn(3, 4), torch.randn(3, 4)
    g = torch.sigmoid(gate.proj(torch.cat([v, d], 1)))
    assert torch.allclose(gate(v, d), g * v + (1 - g) * d)
    assert ((g > 0) & (g < 1)).all()


def test_debias_net_starts_as_identity_on_unit_vectors():
    v = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    assert torch.allclose(DebiasNet(8)(v), v, atol=1e-6)


@pytest.mark.parametrize("negatives", ["hard", "farthest"])
def test_mining_matches_exhaustive_search(negatives):
    rng = np.random.default_rng(0)
    n = 60
    ref = rng.normal(size=(n, 8)).astype(np.float32)
    method = (ref + rng.normal(size=(n, 8))).astype(np.float32)  # a related, different space
    counts = rng.integers(0, 50, n)
    usable = np.ones(n, bool)
    usable[[3, 7]] = False
    cfg = DebiasConfig(head_share=0.2, k_neighbours=3, k_far=4, neighbourhood=6,
                       negatives=negatives)  # fmt: skip
    t = mine_triplets(ref, usable, counts, cfg, method)
    head = head_mask(counts, 0.2)
    assert set(t.anchors) == set(np.flatnonzero(head & usable))
    tail = np.flatnonzero(~head & usable)
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    munit = method / np.linalg.norm(method, axis=1, keepdims=True)
    for i, a in enumerate(t.anchors):
        order = tail[np.argsort(-(unit[tail] @ unit[a]))]
        assert set(t.pos[i]) == set(order[:3])
        if negatives == "farthest":
            assert set(t.neg[i]) == set(order[-4:])
        else:
            by_method = tail[np.argsort(-(munit[tail] @ munit[a]))]
            outside = [j for j in by_method if j not in set(order[:6])]
            assert t.neg[i].tolist() == outside[:4]
    gen = torch.Generator().manual_seed(0)
    a, p, q = t.sample(100, gen)
    assert head[a.numpy()].all() and (~head[p.numpy()]).all() and (~head[q.numpy()]).all()


def test_hard_negatives_never_repeat_a_positive_on_a_small_catalog():
    rng = np.random.default_rng(1)
    n = 20  # 12 tail items: fewer than the default neighbourhood (100) + k_far
    ref = rng.normal(size=(n, 6)).astype(np.float32)
    counts = np.r_[np.full(8, 100), np.zeros(n - 8, np.int64)]
    cfg = DebiasConfig(negatives="hard", head_share=0.4, k_neighbours=3, k_far=10)
    t = mine_triplets(ref, np.ones(n, bool), counts, cfg, ref + rng.normal(size=ref.shape))
    assert t.neg.shape == (8, 10)
    for pos, neg in zip(t.pos, t.neg, strict=True):
        assert not set(pos) & set(neg)


def test_hard_negatives_need_the_method_vectors():
    ref = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="method"):
        mine_triplets(ref, np.ones(30, bool), np.arange(30), DebiasConfig(negatives="hard"))


def test_mining_needs_head_and_tail():
    with pytest.raises(InputError, match="head and tail"):
        mine_triplets(
            np.ones((5, 4), np.float32), np.ones(5, bool), np.zeros(5, np.int64), DebiasConfig()
        )


def test_export_is_weights_only_and_apply_matches_module(tmp_path):
    torch.manual_seed(0)
    head = DebiasHead(8, 16)
    torch.nn.init.normal_(head.net.fc2.weight)
    path = tmp_path / "debias.pt"
    export_debias(head, DebiasConfig(hidden=16), 8, path)
    blob = torch.load(path, weights_only=True)
    assert blob["retrieval_vector"] == "gated"
    v = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    out = apply_debias(path, v)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(head(torch.from_numpy(v)), dim=1).numpy()
    assert np.allclose(out, ref, atol=1e-6)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    d = apply_debias(path, v, mode="debiased")
    assert not np.allclose(d, out)
    loaded, mode = load_debias(path)
    assert mode == "gated" and isinstance(loaded, DebiasHead)
    with pytest.raises(InputError, match="width 8"):
        apply_debias(path, v[:, :4])
