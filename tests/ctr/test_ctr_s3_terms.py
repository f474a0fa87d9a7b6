"""S3's terms inside the CTR network: alignment and the relational anchor, disagreement
mining, and the capacity control (the head trained by the click loss alone). The loss
functions themselves are tested in ``tests/losses/test_s3_losses.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.ctr.test_ctr_model import N_ITEMS, synthetic_batch, synthetic_fmap, synthetic_tables

from visctr.ctr.config import CTRConfig
from visctr.ctr.model import build_ctr_net
from visctr.losses.coral import coral
from visctr.losses.mmd import mmd
from visctr.losses.relational import relational
from visctr.pipeline.methods import CTR_VARIANTS, METHODS
from visctr.s3.config import DebiasConfig
from visctr.s3.mining import DisagreementMiner
from visctr.s3.net import DebiasNet
from visctr.s3.terms import debias_data


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _miner_world(seed: int = 0, n: int = 400, dim: int = 8):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n, dim)).astype(np.float32)
    counts = rng.zipf(1.5, n).astype(np.int64)
    return ref, counts


def test_disagreement_mining_keeps_only_triplets_within_the_margin():
    ref, counts = _miner_world()
    cfg = DebiasConfig(enabled=True, negatives="disagreement", k_neighbours=5, k_far=10,
                       neighbourhood=30, margin=0.2)  # fmt: skip
    data = debias_data(ref, np.ones(len(ref), bool), counts, cfg)
    miner = data.miner
    assert isinstance(miner, DisagreementMiner) and data.triplets is None
    torch.manual_seed(0)
    net = DebiasNet(ref.shape[1], 16)
    with torch.no_grad():  # a debiased space that is not S1's: it disagrees somewhere
        torch.nn.init.normal_(net.fc2.weight, std=0.1)
    vectors = torch.from_numpy(ref)
    miner.mine(net, vectors)
    a, p, n = (torch.from_numpy(x) for x in miner.pool)
    assert 0 < miner.active_share < 1 and len(a) > 0
    with torch.no_grad():
        d = net(vectors)
    hinge = ((d[n] - d[p]) * d[a]).sum(-1) + cfg.margin
    assert bool((hinge > 0).all())  # not one mined triplet is satisfied beyond the margin
    # positives are S1 neighbours of their anchor, negatives outside its S1 neighbourhood
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    for ai, pi, ni in list(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))[:50]:
        tails = miner.tails
        order = tails[np.argsort(-(unit[tails] @ unit[ai]), kind="stable")]
        assert pi in order[: cfg.k_neighbours] and ni not in order[: miner.n_nb]
    # the draws come from the pool
    ta, tp, tn = miner.sample(64, torch.Generator().manual_seed(1))
    pool = set(zip(*(x.tolist() for x in (a, p, n)), strict=True))
    assert set(zip(ta.tolist(), tp.tolist(), tn.tolist(), strict=True)) <= pool


def test_mirror_mining_adds_tail_anchored_triplets_within_the_margin():
    """``mirror``: the pool also holds triplets with a tail anchor, a head positive among
    its S1 neighbours and a head negative outside them, each within the margin."""
    ref, counts = _miner_world(2)
    kw = dict(enabled=True, negatives="disagreement", k_neighbours=5, k_far=10,
              neighbourhood=30, margin=0.2)  # fmt: skip
    torch.manual_seed(0)
    net = DebiasNet(ref.shape[1], 16)
    with torch.no_grad():
        torch.nn.init.normal_(net.fc2.weight, std=0.1)
    vectors = torch.from_numpy(ref)
    plain = debias_data(ref, np.ones(len(ref), bool), counts, DebiasConfig(**kw)).miner
    miner = debias_data(ref, np.ones(len(ref), bool), counts, DebiasConfig(**kw, mirror=True)).miner
    plain.mine(net, vectors)
    miner.mine(net, vectors)
    a, p, n = miner.pool
    heads, tails = set(miner.anchors.tolist()), set(miner.tails.tolist())
    mirrored = np.isin(a, miner.tails)
    assert mirrored.any() and (~mirrored).any()  # both directions are in the pool
    assert set(p[mirrored].tolist()) <= heads and set(n[mirrored].tolist()) <= heads
    assert set(p[~mirrored].tolist()) <= tails
    # the head-anchored part is exactly the plain miner's pool
    assert all(np.array_equal(x[~mirrored], y) for x, y in zip(miner.pool, plain.pool, strict=True))
    with torch.no_grad():
        d = net(vectors)
    at, pt, nt = (torch.from_numpy(x) for x in (a, p, n))
    assert bool((((d[nt] - d[pt]) * d[at]).sum(-1) + 0.2 > 0).all())
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    head_rows = miner.mirror.tails
    for ai, pi, ni in list(zip(a[mirrored], p[mirrored], n[mirrored], strict=True))[:50]:
        order = head_rows[np.argsort(-(unit[head_rows] @ unit[ai]), kind="stable")]
        assert pi in order[:5] and ni not in order[: miner.mirror.n_nb]
    kept = len(a) / (len(plain.candidates[0]) + len(miner.mirror.candidates[0]))
    assert miner.active_share == pytest.approx(kept)
    with pytest.raises(ValueError, match="mirror needs"):
        DebiasConfig(enabled=True, mirror=True)


def test_disagreement_mining_with_a_space_that_agrees_teaches_nothing():
    ref, counts = _miner_world(1)
    cfg = DebiasConfig(enabled=True, negatives="disagreement", k_neighbours=5, k_far=10,
                       neighbourhood=30, margin=0.0)  # fmt: skip
    miner = debias_data(ref, np.ones(len(ref), bool), counts, cfg).miner
    miner.mine(lambda v: _unit(v), torch.from_numpy(ref))  # the S1 space itself
    # with no margin, an S1 neighbour is never farther than a non-neighbour: none active
    assert miner.active_share == 0.0


def _s3_net(dcfg: DebiasConfig, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CTRConfig(debias=dcfg)
    fmap = synthetic_fmap()
    items, queries, affinity = synthetic_tables()
    counts = np.arange(N_ITEMS)[::-1].copy()
    data = debias_data(items, np.ones(N_ITEMS, bool), counts, dcfg, items)
    net = build_ctr_net(cfg, fmap, affinity, data)
    net.set_visual_tables(items, queries)
    with torch.no_grad():
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.3)
    return net.eval(), fmap, items


@pytest.mark.parametrize("align", ["coral", "mmd"])
def test_the_alignment_term_is_in_the_loss(align):
    dcfg = DebiasConfig(enabled=True, triplets_per_step=8, align=align, align_weight=3.0,
                        align_batch=16, relational_weight=0.7, head_share=0.3)  # fmt: skip
    net, fmap, items = _s3_net(dcfg)
    b = synthetic_batch(fmap)
    assert net.aux_parts == ("triplet_loss", "triplet_active", "align_loss", "relational_loss")
    logits, aux, parts = net.forward_prepared(b, net.prepare(b, torch.Generator().manual_seed(5)))
    # the same draws by hand: 3·8 triplet rows, then 16 head and 16 tail rows
    net.debias.steps = 0
    rows = net.debias.sample_rows(torch.Generator().manual_seed(5), net.item_vectors)
    d = net.debias.net(net.item_vectors[rows])
    k = 8
    trip = torch.relu(((d[2 * k : 3 * k] - d[k : 2 * k]) * d[:k]).sum(-1) + dcfg.margin).mean()
    h, t = d[24:40], d[40:56]
    al = (coral if align == "coral" else mmd)(h, t)
    ref = torch.from_numpy(items / np.linalg.norm(items, axis=1, keepdims=True))
    rel = relational(d[24:56], ref[rows[24:56]])
    want = dcfg.weight * trip + 3.0 * al + 0.7 * rel
    torch.testing.assert_close(parts["align_loss"], al, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(parts["relational_loss"], rel, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(aux, want, rtol=1e-5, atol=1e-7)
    assert float(al) > 0 and float(rel) > 0
    # head rows are drawn from the head, tail rows from the tail
    head = set(net.debias.data.head.tolist())
    assert set(rows[24:40].tolist()) <= head and not set(rows[40:56].tolist()) & head


def test_the_alignment_moves_the_tail_only():
    dcfg = DebiasConfig(enabled=True, weight=0.0, align="coral", align_weight=1.0,
                        align_batch=16, head_share=0.3)  # fmt: skip
    net, _, _ = _s3_net(dcfg)
    rows = net.debias.sample_rows(torch.Generator().manual_seed(0), net.item_vectors)
    v = net.item_vectors[rows].clone().requires_grad_(True)
    aux, parts = net.debias.aux_term(net.debias.net(v), rows)
    assert set(parts) == {"align_loss"}
    (g,) = torch.autograd.grad(aux, v)
    assert float(g[:16].abs().sum()) == 0.0 and float(g[16:].abs().sum()) > 0


def test_the_capacity_control_has_the_head_and_no_debiasing_term():
    ctr = CTR_VARIANTS[METHODS["S1+S2+H"].ctr](CTRConfig())
    d_ctr = CTR_VARIANTS[METHODS["S1+S2+D"].ctr](CTRConfig())
    assert ctr.debias.enabled and not ctr.debias.needs_reference and not ctr.debias.aligns
    assert d_ctr.debias.needs_reference
    assert METHODS["S1+S2+H"].encoder == METHODS["S1+S2+D"].encoder
    assert debias_data(None, np.ones(4, bool), np.arange(4), ctr.debias) is None
    # the same head (same parameters) as S1+S2+D's, with nothing but clicks to train it
    fmap = synthetic_fmap()
    items, queries, affinity = synthetic_tables()
    h_net = build_ctr_net(ctr, fmap, affinity, None)
    d_net = build_ctr_net(d_ctr, fmap, affinity, None)
    assert list(h_net.state_dict()) == list(d_net.state_dict())
    h_net.set_visual_tables(items, queries)
    assert h_net.aux_loss(synthetic_batch(fmap), torch.Generator()) == (None, {})


def _gated_items(net) -> torch.Tensor:
    """Each item row's gated vector as the CTR network computes it (one query row)."""
    from visctr.s3.terms import S3Debias

    rows = torch.arange(N_ITEMS)
    plan = S3Debias.plan(1, rows)
    _, gi, _ = net.debias.apply_plan(
        net.query_vectors[:1], net.item_vectors, plan, net.item_buckets
    )
    return gi


def test_the_exposure_aware_gate_reads_exposure(tmp_path):
    from visctr.s3.artifact import DebiasTransform, export_debias

    net, fmap, items = _s3_net(DebiasConfig(enabled=True, weight=0.0, gate_exposure=True))
    assert net.debias.n_buckets == CTRConfig().pop_buckets
    assert "debias.exposure.weight" in net.state_dict()
    assert (
        "debias.exposure.weight"
        not in build_ctr_net(
            CTRConfig(debias=DebiasConfig(enabled=True, weight=0.0)), fmap, synthetic_tables()[2]
        ).state_dict()
    )
    b = synthetic_batch(fmap)
    start = net(b)
    with torch.no_grad():  # zero-initialised: it starts as the plain gate
        same = net.item_buckets.clone()
        net.item_buckets.copy_(torch.roll(same, 1))
        torch.testing.assert_close(net(b), start)
        net.item_buckets.copy_(same)
        torch.nn.init.normal_(net.debias.exposure.weight, std=2.0)
        trained = net(b)
        net.item_buckets.copy_(torch.roll(same, 1))  # other buckets: other logits
        moved = net(b)
        net.item_buckets.copy_(same)
    assert float((trained - moved).abs().max()) > 1e-3
    # serving: debias.pt carries each item's bucket and maps items as the network does
    path = tmp_path / "debias.pt"
    ids = np.asarray(fmap.item_ids, dtype=np.int64)
    export_debias(net.debias, DebiasConfig(), items.shape[1], path, ids,
                  np.asarray(fmap.item_pop_bucket))  # fmt: skip
    t = DebiasTransform(path)
    assert t.exposure_aware
    with torch.no_grad():
        want = _gated_items(net).numpy()
    np.testing.assert_allclose(t.items(items, ids), want, atol=1e-6)
    assert np.abs(t.items(items, ids[::-1].copy()) - want).max() > 1e-3  # by id, not by row
    with pytest.raises(Exception, match="gate reads exposure"):
        t(items)  # which rows are items is not guessed
    assert np.abs(t.queries(items) - want).max() > 1e-3  # queries have a row of their own
    unseen = t.items(items[:3], np.array([10**9, 10**9 + 1, 10**9 + 2]))
    never = DebiasTransform(path)
    never.table.buckets[:] = 0
    np.testing.assert_allclose(unseen, never.items(items[:3], ids[:3]), atol=1e-6)
