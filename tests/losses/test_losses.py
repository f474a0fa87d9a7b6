"""Every loss against a brute-force python-loop reference on random inputs."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from visctr.losses import (
    category_cross_entropy,
    click_contrastive_loss,
    false_negative_mask,
    info_nce_loss,
    simsiam_loss,
)
from visctr.losses.byol import byol_loss

SETTINGS = settings(max_examples=25, deadline=None)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(
        sum(a[k] * b[k] for k in range(len(a)))
        / math.sqrt(sum(x * x for x in a))
        / math.sqrt(sum(x * x for x in b))
    )


def _rand(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# --- SimSiam -------------------------------------------------------------------------


@SETTINGS
@given(b=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_simsiam_matches_loop(b, d, seed):
    p1, p2, z1, z2 = (_rand(seed + k, b, d) for k in range(4))
    ref = 0.0
    for i in range(b):
        ref += -0.5 * _cos(p1[i], z2[i]) - 0.5 * _cos(p2[i], z1[i])
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(ref / b, rel=1e-9, abs=1e-9)


def test_simsiam_stop_gradient():
    p1, p2, z1, z2 = (_rand(k, 4, 3).requires_grad_() for k in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0


# --- BYOL ----------------------------------------------------------------------------


@SETTINGS
@given(b=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_byol_matches_loop(b, d, seed):
    p1, p2, z1, z2 = (_rand(seed + k, b, d) for k in range(4))
    ref = sum(2 - 2 * _cos(p1[i], z2[i]) for i in range(b)) / b
    ref += sum(2 - 2 * _cos(p2[i], z1[i]) for i in range(b)) / b
    assert byol_loss(p1, p2, z1, z2).item() == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_byol_stop_gradient_and_range():
    p1, p2, z1, z2 = (_rand(k, 4, 3).requires_grad_() for k in range(4))
    loss = byol_loss(p1, p2, z1, z2)
    assert 0 <= loss.item() <= 8
    loss.backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    same = _rand(0, 4, 3)
    assert byol_loss(same, same, 2 * same, 3 * same).item() == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        byol_loss(p1, p2, z1, z2[:2])


# --- InfoNCE -------------------------------------------------------------------------


def _info_nce_ref(z1, z2, t):
    views = [z1[i] for i in range(len(z1))] + [z2[i] for i in range(len(z2))]
    b, n, total = len(z1), len(views), 0.0
    for a in range(n):
        pos = a + b if a < b else a - b
        num = math.exp(_cos(views[a], views[pos]) / t)
        den = sum(math.exp(_cos(views[a], views[k]) / t) for k in range(n) if k != a)
        total += -math.log(num / den)
    return total / n


@SETTINGS
@given(b=st.integers(1, 6), d=st.integers(1, 5), t=st.floats(0.05, 2.0), seed=st.integers(0, 10**6))
def test_info_nce_matches_loop(b, d, t, seed):
    z1, z2 = _rand(seed, b, d), _rand(seed + 1, b, d)
    assert info_nce_loss(z1, z2, t).item() == pytest.approx(_info_nce_ref(z1, z2, t), rel=1e-8)


# --- click loss ----------------------------------------------------------------------


def _click_ref(q, it, qids, iids, t, extra=None, extra_ids=None, clicked=()):
    cands = [it[i] for i in range(len(it))]
    cand_ids = [int(x) for x in iids]
    if extra is not None:
        cands += [extra[i] for i in range(len(extra))]
        cand_ids += [int(x) for x in extra_ids]
    known = {(int(a), int(b)) for a, b in zip(qids, iids, strict=True)} | set(clicked)
    total = 0.0
    for i in range(len(q)):
        num = math.exp(_cos(q[i], cands[i]) / t)
        den = num
        for j in range(len(cands)):
            if j == i or cand_ids[j] == int(iids[i]) or (int(qids[i]), cand_ids[j]) in known:
                continue
            den += math.exp(_cos(q[i], cands[j]) / t)
        total += -math.log(num / den)
    return total / len(q)


@SETTINGS
@given(
    b=st.integers(1, 6),
    m=st.integers(0, 5),
    d=st.integers(1, 4),
    t=st.floats(0.05, 1.0),
    seed=st.integers(0, 10**6),
    data=st.data(),
)
def test_click_loss_matches_loop(b, m, d, t, seed, data):
    # small id ranges so duplicates and shared queries are frequent
    qids = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=b, max_size=b)))
    iids = torch.tensor(data.draw(st.lists(st.integers(0, 6), min_size=b, max_size=b)))
    xids = torch.tensor(
        data.draw(st.lists(st.integers(0, 6), min_size=m, max_size=m)), dtype=torch.long
    )
    clicked = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), max_size=6))
    q, it, ex = _rand(seed, b, d), _rand(seed + 1, b, d), _rand(seed + 2, m, d)
    pairs = torch.tensor(clicked, dtype=torch.long).view(-1, 2)
    got = click_contrastive_loss(
        q,
        it,
        qids,
        iids,
        t,
        extra_emb=ex if m else None,
        extra_ids=xids if m else None,
        clicked_pairs=pairs,
    )
    ref = _click_ref(q, it, qids, iids, t, ex if m else None, xids, clicked)
    assert got.item() == pytest.approx(ref, rel=1e-8, abs=1e-10)
    # the same result from a precomputed mask
    cand_ids = torch.cat([iids, xids]) if m else iids
    known = torch.cat([torch.stack([qids, iids], 1), pairs])
    mask = false_negative_mask(qids, iids, cand_ids, known)
    got2 = click_contrastive_loss(
        q, it, qids, iids, t, extra_emb=ex if m else None, extra_ids=xids if m else None, mask=mask
    )
    assert got2.item() == pytest.approx(ref, rel=1e-8, abs=1e-10)


def test_masked_false_negative_has_no_gradient_and_no_effect():
    torch.manual_seed(0)
    qids = torch.tensor([10, 11, 12])
    iids = torch.tensor([100, 101, 102])
    # extra pool: item 200 was clicked for all three queries (a false negative everywhere);
    # item 101 duplicates anchor 1's positive; item 300 is a true (hard) negative.
    xids = torch.tensor([200, 101, 300])
    clicked = torch.tensor([[10, 200], [11, 200], [12, 200]])
    q = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    it = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ex = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = click_contrastive_loss(q, it, qids, iids, 0.2, ex, xids, clicked)
    loss.backward()
    assert torch.count_nonzero(ex.grad[0]) == 0  # clicked for every query: masked
    assert torch.count_nonzero(ex.grad[2]) > 0  # true negative: pushed away
    # the duplicate of anchor 1's positive is a negative for anchors 0 and 2 only
    assert torch.count_nonzero(ex.grad[1]) > 0
    # moving a masked candidate leaves the loss unchanged; moving a negative does not
    with torch.no_grad():
        ex2 = ex.detach().clone()
        ex2[0] = torch.randn(4, dtype=torch.float64) * 5
        same = click_contrastive_loss(q, it, qids, iids, 0.2, ex2, xids, clicked)
        ex3 = ex.detach().clone()
        ex3[2] = torch.randn(4, dtype=torch.float64) * 5
        diff = click_contrastive_loss(q, it, qids, iids, 0.2, ex3, xids, clicked)
    assert same.item() == pytest.approx(loss.item(), rel=1e-12)
    assert diff.item() != pytest.approx(loss.item(), rel=1e-6)


def test_duplicate_positive_in_batch_is_masked_for_that_anchor_only():
    # rows 0 and 1: two queries both clicked item 5; row 1's item is a duplicate of row 0's
    # positive, so it is not a negative for anchor 0 (and vice versa)
    qids = torch.tensor([1, 2, 3])
    iids = torch.tensor([5, 5, 6])
    mask = false_negative_mask(qids, iids, iids, None)
    assert mask.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_same_query_clicks_are_masked_in_batch():
    # query 7 clicked items 1 and 2 (two rows): neither is a negative for the other row
    q = _rand(0, 3, 4).requires_grad_()
    it = _rand(1, 3, 4).requires_grad_()
    qids, iids = torch.tensor([7, 7, 8]), torch.tensor([1, 2, 3])
    click_contrastive_loss(q, it, qids, iids, 0.5).backward()
    ref = _click_ref(q.detach(), it.detach(), qids, iids, 0.5)
    got = click_contrastive_loss(q.detach(), it.detach(), qids, iids, 0.5).item()
    assert got == pytest.approx(ref, rel=1e-10)
    # row 0 sees only item 3 as a negative: loss_0 = -log(e^{s00}/(e^{s00}+e^{s02}))
    t = 0.5
    s = [_cos(q[0].detach(), it[j].detach()) / t for j in range(3)]
    l0 = -math.log(math.exp(s[0]) / (math.exp(s[0]) + math.exp(s[2])))
    m = click_contrastive_loss(
        q.detach()[:1],
        it.detach()[:1],
        qids[:1],
        iids[:1],
        t,
        extra_emb=it.detach()[1:],
        extra_ids=iids[1:],
        clicked_pairs=torch.tensor([[7, 2]]),
    )
    assert m.item() == pytest.approx(l0, rel=1e-10)


def test_pair_keys_reject_out_of_range_ids():
    with pytest.raises(ValueError):
        false_negative_mask(
            torch.tensor([1]), torch.tensor([2**31]), torch.tensor([2**31]), torch.tensor([[1, 2]])
        )


# --- classification ------------------------------------------------------------------


@SETTINGS
@given(b=st.integers(1, 6), k=st.integers(2, 5), seed=st.integers(0, 10**6), data=st.data())
def test_category_cross_entropy_matches_loop(b, k, seed, data):
    logits = _rand(seed, b, k)
    y = torch.tensor(data.draw(st.lists(st.integers(0, k - 1), min_size=b, max_size=b)))
    ref = 0.0
    for i in range(b):
        lse = math.log(sum(math.exp(float(logits[i, j])) for j in range(k)))
        ref += lse - float(logits[i, int(y[i])])
    assert category_cross_entropy(logits, y).item() == pytest.approx(ref / b, rel=1e-9)
