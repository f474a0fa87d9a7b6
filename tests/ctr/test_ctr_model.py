"""The CTR network: its building blocks against plain PyTorch references, and ``CTRNet``
itself (output shape, every input reaches the logit, the debias head, the aux loss, the
saved keys, the architecture registry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from visctr.ctr.batch import Batch
from visctr.ctr.config import CTRConfig
from visctr.ctr.feature_map import FeatureMap, FieldSpec
from visctr.ctr.model import ARCHS, BlockLinear, CTRNet, build_ctr_net
from visctr.errors import ConfigError
from visctr.losses.triplet import triplet_loss
from visctr.s3.config import DebiasConfig
from visctr.s3.mining import Triplets


def test_block_linear_is_one_linear_over_the_concatenation():
    torch.manual_seed(0)
    blk = BlockLinear(5, 7, 4)
    ref = nn.Linear(12, 4)
    with torch.no_grad():
        ref.weight.copy_(torch.cat([blk.a.weight, blk.b.weight], dim=1))
        ref.bias.copy_(blk.b.bias)
    a = torch.randn(9, 5, requires_grad=True)
    b = torch.randn(9, 7, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    out, out_ref = blk(a, b), ref(torch.cat([a2, b2], dim=1))
    torch.testing.assert_close(out, out_ref)
    g = torch.randn_like(out)
    out.backward(g)
    out_ref.backward(g)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
    torch.testing.assert_close(
        torch.cat([blk.a.weight.grad, blk.b.weight.grad], 1), ref.weight.grad
    )
    torch.testing.assert_close(blk.b.bias.grad, ref.bias.grad)


def test_block_linear_init_uses_the_full_fan_in():
    torch.manual_seed(0)
    blk = BlockLinear(16, 240, 256)
    bound = 1 / math.sqrt(256)
    for t in (blk.a.weight, blk.b.weight, blk.b.bias):
        assert t.abs().max() <= bound
        assert t.abs().max() > 0.9 * bound  # uniform over the whole range, not a smaller one


def test_block_linear_skips_the_input_gradient_of_a_frozen_block():
    blk = BlockLinear(3, 4, 2)
    a = torch.randn(6, 3, requires_grad=True)
    b = torch.randn(6, 4)  # e.g. rows of a frozen visual table
    blk(a, b).sum().backward()
    assert a.grad is not None and b.grad is None
    assert blk.b.weight.grad is not None  # its weight still learns


# ---- CTRNet as a whole, on a synthetic feature map -------------------------------------

N_ITEMS, N_QUERIES, N_USERS, N_CAT, DIM = 30, 40, 12, 4, 8
VOCABS = [("user", N_USERS), ("hour", 24), ("day", 7), ("position", 11), ("category", N_CAT),
          ("pop_bucket", 5)]  # fmt: skip


def synthetic_fmap() -> FeatureMap:
    fields, off = [], 0
    for name, v in VOCABS:
        fields.append(FieldSpec(name, v, off))
        off += v
    return FeatureMap(fields, DIM, N_CAT, 10, [1, 2, 4, 8], 0, 100, 90, list(range(N_ITEMS)),
                      [i % N_CAT for i in range(N_ITEMS)], [i % 5 for i in range(N_ITEMS)],
                      list(range(N_USERS - 1)))  # fmt: skip


def synthetic_tables(seed: int = 0):
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    items, queries = unit(rng.normal(size=(N_ITEMS, DIM))), unit(rng.normal(size=(N_QUERIES, DIM)))
    affinity = rng.dirichlet(np.ones(N_CAT), N_USERS).astype(np.float32)
    return items, queries, affinity


def synthetic_batch(fmap: FeatureMap, n: int = 64, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    raw = {name: rng.integers(0, v, n) for name, v in VOCABS}
    item = rng.integers(0, N_ITEMS, n)
    raw["category"] = item % N_CAT
    sparse = np.stack([raw[f.name] + f.offset for f in fmap.fields], axis=1)
    y = (rng.random(n) < 0.3).astype(np.float32)
    return Batch.from_columns(sparse, raw["user"], item, rng.integers(0, N_QUERIES, n),
                              raw["category"], y)  # fmt: skip


def make_net(
    debias: bool = False,
    triplets: Triplets | None = None,
    seed: int = 0,
    weight: float = 0.5,
    **kw,
):
    """A seeded ``CTRNet`` with visual tables set; ``weight``: the triplet term's λ."""
    torch.manual_seed(seed)
    dcfg = DebiasConfig(enabled=debias, triplets_per_step=16, weight=weight)
    cfg = CTRConfig(debias=dcfg, **kw)
    fmap = synthetic_fmap()
    items, queries, affinity = synthetic_tables()
    net = build_ctr_net(cfg, fmap, affinity, triplets)
    net.set_visual_tables(items, queries)
    return net.eval(), fmap, cfg


def synthetic_triplets(seed: int = 1) -> Triplets:
    rng = np.random.default_rng(seed)
    head = np.arange(6)
    return Triplets(head, rng.integers(6, N_ITEMS, (6, 3)), rng.integers(6, N_ITEMS, (6, 5)))


def test_ctr_net_gives_one_finite_logit_per_impression():
    net, fmap, _ = make_net()
    b = synthetic_batch(fmap, n=37)
    out = net(b)
    assert out.shape == (37,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # rows are independent: a row's logit does not depend on the rest of the batch
    torch.testing.assert_close(net(Batch(b.packed[5:9], b.labels[5:9])), out[5:9])


def _with_column(b: Batch, name: str, value) -> Batch:
    packed = b.packed.clone()
    view = Batch(packed, b.labels)
    if name in ("user_row", "item_row", "query_row", "category"):
        getattr(view, name).copy_(value(getattr(b, name)))
    else:
        j = [f.name for f in synthetic_fmap().fields].index(name)
        view.sparse[:, j].copy_(value(b.sparse[:, j]))
    return view


def _shifted(vocab: int, offset: int = 0):
    return lambda col: (col - offset + 1) % vocab + offset


@pytest.mark.parametrize("debias", [False, True])
def test_every_input_field_moves_the_logit(debias):
    """Changing any one named input (each sparse field, the affinity row, the item and
    query rows, the item category) changes the logits: no input is dropped on the way."""
    net, fmap, _ = make_net(debias=debias)
    b = synthetic_batch(fmap)
    base = net(b)
    changes = {f.name: _shifted(f.vocab, f.offset) for f in fmap.fields}
    changes |= {"user_row": _shifted(N_USERS), "item_row": _shifted(N_ITEMS),
                "query_row": _shifted(N_QUERIES), "category": _shifted(N_CAT)}  # fmt: skip
    for name, change in changes.items():
        moved = (net(_with_column(b, name, change)) - base).abs()
        assert (moved > 1e-6).float().mean() > 0.5, name


def test_the_debias_head_shapes_the_visual_features():
    """A fresh debias head is the identity (residual zero-init, gate over v and d = v), so
    the network equals one without it; once the head is not the identity, logits move."""
    net, fmap, cfg = make_net(debias=True)
    plain, _, _ = make_net(debias=False)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "debias" not in k})
    b = synthetic_batch(fmap)
    torch.testing.assert_close(net(b), plain(b), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.5)
    assert (net(b) - plain(b)).abs().max() > 1e-3


def test_state_dict_keys_are_the_saved_model_format():
    """``model.pt`` files (MODEL_FORMAT 2) hold exactly these keys, in this order: renaming
    or reordering a module breaks every saved model or its seeded initialisation."""
    plain, _, _ = make_net()
    head = ["user_affinity", "embedding.weight"]
    rest = ["cross.0.w.0.weight", "cross.0.w.1.weight", "cross.0.w.1.bias", "cross_out.weight",
            "deep_in.a.weight", "deep_in.b.weight", "deep_in.b.bias", "deep.1.weight",
            "deep.1.bias", "deep_out.weight", "deep_out.bias"]  # fmt: skip
    assert list(plain.state_dict()) == head + rest
    net, _, _ = make_net(debias=True, triplets=synthetic_triplets())
    s3 = ["debias.net.fc1.weight", "debias.net.fc1.bias", "debias.net.fc2.weight",
          "debias.net.fc2.bias", "debias.gate.proj.weight", "debias.gate.proj.bias"]  # fmt: skip
    assert list(net.state_dict()) == head + s3 + rest


def test_aux_loss_is_the_weighted_triplet_loss_and_trains_only_the_debias_net():
    trip = synthetic_triplets()
    net, fmap, cfg = make_net(debias=True, triplets=trip)
    with torch.no_grad():
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.3)
    b = synthetic_batch(fmap)
    assert net.aux_parts == ("triplet_loss", "triplet_active")
    aux, parts = net.aux_loss(b, torch.Generator().manual_seed(3))
    a, p, n = trip.sample(cfg.debias.triplets_per_step, torch.Generator().manual_seed(3))
    iv = net.item_vectors
    d = net.debias.net
    want = triplet_loss(d(iv[a]), d(iv[p]), d(iv[n]), cfg.debias.margin)
    torch.testing.assert_close(parts["triplet_loss"], want)
    torch.testing.assert_close(aux, cfg.debias.weight * want)
    assert want > 0
    aux.backward()
    trained = {
        k for k, v in net.named_parameters() if v.grad is not None and v.grad.abs().sum() > 0
    }
    assert trained == {"debias.net.fc1.weight", "debias.net.fc1.bias", "debias.net.fc2.weight",
                       "debias.net.fc2.bias"}  # fmt: skip


def test_no_aux_loss_without_triplets():
    for net in (make_net()[0], make_net(debias=True)[0]):  # plain; a loaded S3 model
        assert net.aux_loss(synthetic_batch(synthetic_fmap()), torch.Generator()) == (None, {})
        assert net.aux_parts == ()
    with pytest.raises(ValueError, match="debias"):
        make_net(debias=False, triplets=synthetic_triplets())


def test_arch_is_an_open_registry(monkeypatch):
    with pytest.raises(ConfigError, match=r"ctr\.arch: unknown architecture 'nope'; known: dcnv2"):
        make_net(arch="nope")
    built = []

    def factory(fmap, cfg, affinity, triplets):
        built.append(cfg.arch)
        return CTRNet(fmap, cfg, affinity, triplets)

    monkeypatch.setitem(ARCHS, "mine", factory)
    net, _, _ = make_net(arch="mine")
    assert built == ["mine"] and isinstance(net, CTRNet)


def test_same_seed_same_initial_weights():
    a, _, _ = make_net(debias=True, seed=4)
    b, _, _ = make_net(debias=True, seed=4)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


# ---- S3 batched over distinct items == per row -------------------------------------------


def _per_row_reference(net: CTRNet, b: Batch, gen: torch.Generator):
    """The S3 step as first written: the head on every row of the batch (queries and items
    stacked), then the triplet term on its own DebiasNet pass over the sampled rows."""
    head = net.debias
    qv = net.query_vectors.index_select(0, b.query_row)
    iv = net.item_vectors.index_select(0, b.item_row)
    v = torch.cat([qv, iv])
    d = head.net(v)
    z = torch.cat([v, d], dim=-1) @ head.gate.proj.weight.t() + head.gate.proj.bias
    g = torch.sigmoid(z)
    both = torch.nn.functional.normalize(g * v + (1.0 - g) * d, dim=-1)
    n = b.size
    emb = net.embedding(b.sparse).reshape(n, -1)
    q, i = both[:n], both[n:]
    aff = net.user_affinity.index_select(0, b.user_row)
    s = net.visual_scale
    feats = torch.cat([(q * i).sum(-1, keepdim=True), aff.gather(1, b.category.unsqueeze(1)),
                       aff, q * s, i * s], dim=1)  # fmt: skip
    logits = net._logits(emb, feats)
    k = head.cfg.triplets_per_step
    a, p, m = head.triplets.sample(k, gen)
    iv_all = net.item_vectors
    trip = triplet_loss(
        head.net(iv_all[a]), head.net(iv_all[p]), head.net(iv_all[m]), head.cfg.margin
    )
    return logits, head.cfg.weight * trip, trip


def _grads(net, loss):
    net.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rows", ["distinct", "repeated"])
def test_batched_s3_step_equals_the_per_row_one(rows):
    """``forward_with_aux`` runs the debias head once per distinct item and shares its
    DebiasNet pass with the triplet rows: logits, the aux term and every gradient equal
    the per-row computation (float tolerance: only summation order differs)."""
    trip = synthetic_triplets()
    net, fmap, cfg = make_net(debias=True, triplets=trip)
    with torch.no_grad():  # a head that is not the identity, a gate that is not 1/2
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.3)
        torch.nn.init.normal_(net.debias.gate.proj.weight, std=0.3)
    # items of the batch interleaved (in id order) with items only the triplets use, so a
    # distinct batch item's position among the gated rows is not its position among all
    n = 12 if rows == "distinct" else 96
    b = synthetic_batch(fmap, n=n)
    b.item_row.copy_(torch.arange(N_ITEMS - 1, 0, -2)[torch.arange(n) % 12])
    assert len(set(b.item_row.tolist()) & set(trip.pos.ravel().tolist())) > 0
    net.train()
    logits, aux, parts = net.forward_with_aux(b, torch.Generator().manual_seed(5))
    want_logits, want_aux, want_trip = _per_row_reference(net, b, torch.Generator().manual_seed(5))
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, want_aux, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(parts["triplet_loss"], want_trip, atol=1e-6, rtol=1e-5)
    y = b.labels
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    got = _grads(net, bce(logits, y) + aux)
    want = _grads(net, bce(want_logits, y) + want_aux)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=k)


def test_forward_with_aux_is_forward_and_aux_loss():
    """One pass gives what the two calls give (same generator draws), and ``forward`` alone
    (validation, inference) is the same function as the training pass."""
    net, fmap, _ = make_net(debias=True, triplets=synthetic_triplets())
    with torch.no_grad():
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.3)
    b = synthetic_batch(fmap)
    logits, aux, parts = net.forward_with_aux(b, torch.Generator().manual_seed(2))
    aux2, parts2 = net.aux_loss(b, torch.Generator().manual_seed(2))
    torch.testing.assert_close(logits, net(b), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(aux, aux2, atol=1e-7, rtol=1e-5)
    plain, fmap, _ = make_net()
    out = plain.forward_with_aux(synthetic_batch(fmap), torch.Generator())
    assert out[1:] == (None, {}) and torch.equal(out[0], plain(synthetic_batch(fmap)))
