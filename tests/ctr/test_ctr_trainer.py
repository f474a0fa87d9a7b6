"""``CTRModule``: the loss it minimises is BCE + the network's aux loss (S3's λ·triplet)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from visctr.ctr.trainer import CTRModule
from visctr.s3.net import DebiasHead

from .test_ctr_model import make_net, synthetic_batch, synthetic_triplets


def _fit(weight: float, steps: int = 6) -> tuple[dict[str, torch.Tensor], dict, list]:
    """Weights before and after ``steps`` optimiser steps on synthetic batches."""
    net, fmap, cfg = make_net(debias=True, triplets=synthetic_triplets(), weight=weight)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    module = CTRModule(net.train(), cfg, seed=0)
    batches = [[synthetic_batch(fmap, n=64, seed=s) for s in range(steps)]]  # one Grouped step
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return before, net.state_dict(), module.history


@pytest.fixture
def ctr_gradient_stopped(monkeypatch):
    """The click loss no longer reaches the DebiasNet (as scripts/s3_sweep.py --detach-debias)."""
    monkeypatch.setattr(DebiasHead, "detach_debiased", True)


def _moved(before, after, prefix: str) -> float:
    return max((after[k] - before[k]).abs().max().item() for k in before if k.startswith(prefix))


def test_the_triplet_term_alone_trains_the_debias_net(ctr_gradient_stopped):
    """With the CTR gradient stopped, only ``λ·L_triplet`` can move the DebiasNet: it does
    at λ > 0 and does not at λ = 0. Fails if the trainer drops the aux term from the loss."""
    before, after, history = _fit(weight=0.5)
    assert _moved(before, after, "debias.net.") > 1e-4
    assert history[0]["triplet_loss"] > 0
    before0, after0, _ = _fit(weight=0.0)
    assert _moved(before0, after0, "debias.net.") == 0.0
    assert _moved(before0, after0, "deep_out.") > 1e-4  # the click loss did train the rest


def test_lambda_changes_the_trained_network():
    """Same seed and data, λ = 0 vs λ > 0: different weights everywhere the term reaches."""
    _, a, _ = _fit(weight=0.0)
    _, b, _ = _fit(weight=0.5)
    assert _moved(a, b, "debias.net.") > 1e-4
    assert _moved(a, b, "deep_out.") > 0  # and, through the features, the rest of the model


def test_compiled_s3_step_equals_the_eager_one():
    """With ``ctr.compile`` the S3 pass after the row plan goes through ``torch.compile``
    as one graph (no break at ``torch.unique``): logits, the triplet term and every
    gradient equal the eager pass on the same draws, for two batches with different
    numbers of distinct items (one dynamic-shape graph serves both), and a pickled module
    drops the compiled function."""
    import pickle
    from dataclasses import replace

    from torch.nn.functional import binary_cross_entropy_with_logits as bce

    net, fmap, cfg = make_net(debias=True, triplets=synthetic_triplets())
    with torch.no_grad():  # a head that is not the identity
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.3)
    eager = CTRModule(net.train(), cfg, seed=3)
    compiled = CTRModule(net, replace(cfg, compile=True), seed=3)
    b = synthetic_batch(fmap, n=64)
    plan = net.prepare(b, torch.Generator().manual_seed(0))
    assert torch._dynamo.explain(net.forward_prepared)(b, plan).graph_break_count == 0
    for n in (64, 40):
        b = synthetic_batch(fmap, n=n, seed=n)
        got, want = compiled._train_outputs(b), eager._train_outputs(b)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5)
        grads = []
        for logits, aux, _ in (got, want):
            net.zero_grad(set_to_none=True)
            (bce(logits, b.labels) + aux).backward()
            grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
        assert grads[0]["debias.net.fc1.weight"].abs().sum() > 0
        for k in grads[1]:
            torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-4, msg=k)
    assert compiled._compiled_step is not None
    assert pickle.loads(pickle.dumps(compiled))._compiled_step is None


def test_a_network_without_prepare_trains_through_forward_and_aux_loss():
    """The trainer's fallback for architectures without ``prepare``/``forward_prepared``:
    a step is ``forward`` + ``aux_loss`` (same draws, so the same values as one pass)."""
    net, fmap, cfg = make_net(debias=True, triplets=synthetic_triplets())
    with torch.no_grad():
        torch.nn.init.normal_(net.debias.net.fc2.weight, std=0.3)
    b = synthetic_batch(fmap, n=48)
    one_pass = CTRModule(net, cfg, seed=4)._train_outputs(b)
    net.prepare = None  # as an architecture that has none
    logits, aux, parts = CTRModule(net, cfg, seed=4)._train_outputs(b)
    torch.testing.assert_close(logits, net(b))
    torch.testing.assert_close(logits, one_pass[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(aux, one_pass[1], atol=1e-7, rtol=1e-5)
    assert parts.keys() == one_pass[2].keys() == {"triplet_loss", "triplet_active"}
