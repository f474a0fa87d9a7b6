"""Inverse-propensity weights: estimation against brute force, the weighted loss, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visctr.ctr import CTRConfig, train_ctr
from visctr.ctr.batch import Batch
from visctr.ctr.config import IPSConfig
from visctr.ctr.feature_map import FeatureMap, FieldSpec
from visctr.ctr.ips import IPSWeights, examination
from visctr.errors import InputError
from visctr.train import TrainerConfig


def test_examination_is_the_click_rate_ratio_made_non_increasing():
    imp = np.array([100, 100, 0, 100, 100])
    clk = np.array([20, 10, 0, 12, 2])
    # rates .2 .1 (gap) .12 .02 -> ratios 1 .5 .5 .6 .1 -> non-increasing 1 .5 .5 .5 .1
    assert np.allclose(examination(imp, clk), [1, 0.5, 0.5, 0.5, 0.1])
    with pytest.raises(InputError, match="no clicks at the top position"):
        examination(np.array([10, 10]), np.array([0, 3]))


def _fmap(n_items: int) -> FeatureMap:
    fields = [FieldSpec("user", 3, 0), FieldSpec("position", 4, 3)]
    return FeatureMap(fields, 2, 1, 3, [1], 0, 1, 1, list(range(n_items)), [0] * n_items,
                      [0] * n_items, [1, 2])  # fmt: skip


def test_weights_brute_force_clip_and_normalisation():
    counts = np.array([30, 10, 0, 20])  # mean over shown items = 20
    w = IPSWeights.estimate(
        _fmap(4), counts, np.array([10, 10, 10, 10]), np.array([4, 2, 1, 1]), clip=10
    )
    items, pos = np.array([0, 1, 3, 1]), np.array([0, 1, 3, 2])
    batch = Batch.from_columns(
        np.stack([np.zeros(4), 3 + pos], 1),
        np.zeros(4),
        items,
        np.zeros(4),
        np.zeros(4),
        np.zeros(4),
    )
    exam = np.array([1, 0.5, 0.25, 0.25])
    raw = (20 / counts[items]) / exam[pos]
    expect = np.clip(raw, 0.1, 10) / np.clip(raw, 0.1, 10).mean()
    assert torch.allclose(w(batch), torch.as_tensor(expect, dtype=torch.float32))
    tight = IPSWeights.estimate(_fmap(4), counts, np.full(4, 10), np.array([4, 2, 1, 1]), clip=2)
    got = tight(batch)
    assert float(got.max() / got.min()) <= 4 + 1e-6  # each raw weight in [1/2, 2]
    assert got.mean().item() == pytest.approx(1.0)


def test_ips_training_differs_from_plain_and_is_reproducible(tiny_world, tiny_embeddings, tmp_path):
    def cfg(ips: bool) -> CTRConfig:
        return CTRConfig(batch_size=256, max_epochs=1, ips=IPSConfig(enabled=ips),
                         trainer=TrainerConfig(accelerator="cpu", progress_bar=False))  # fmt: skip

    def weights(d):
        return torch.load(d / "model.pt", weights_only=True)["state_dict"]

    plain = weights(train_ctr(tiny_world, tiny_embeddings, tmp_path / "p", cfg(False), seed=0))
    ips = weights(train_ctr(tiny_world, tiny_embeddings, tmp_path / "i", cfg(True), seed=0))
    again = weights(train_ctr(tiny_world, tiny_embeddings, tmp_path / "j", cfg(True), seed=0))
    assert not torch.equal(plain["deep_out.weight"], ips["deep_out.weight"])
    assert all(torch.equal(ips[k], again[k]) for k in ips)
