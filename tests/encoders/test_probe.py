"""The online kNN category probe against a brute-force reference."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from visctr.encoders.backbones import Encoder, build_backbone
from visctr.encoders.probe import KnnProbe, knn_accuracy


def _reference(z: torch.Tensor, labels: torch.Tensor, k: int, t: float) -> float:
    n, correct = len(z), 0
    for i in range(n):
        sims = [(float(z[i] @ z[j]), j) for j in range(n) if j != i]
        sims.sort(key=lambda s: -s[0])
        votes: dict[int, float] = {}
        for s, j in sims[: min(k, n - 1)]:
            votes[int(labels[j])] = votes.get(int(labels[j]), 0.0) + float(np.exp(s / t))
        pred = max(sorted(votes), key=lambda c: votes[c])
        correct += int(pred == int(labels[i]))
    return correct / n


def test_knn_accuracy_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    for n, k in ((40, 5), (25, 30), (1100, 7)):  # k > n-1; more rows than one 1024 block
        z = F.normalize(torch.randn(n, 8, generator=g), dim=1)
        labels = torch.randint(0, 4, (n,), generator=g)
        if n > 200:  # the reference is quadratic in Python: check a block boundary cheaply
            labels[:] = torch.arange(n) % 3
            z = F.normalize(F.one_hot(labels, 8).float() + 0.05 * torch.randn(n, 8), dim=1)
            assert knn_accuracy(z, labels, k, 0.07) == 1.0
            continue
        assert abs(knn_accuracy(z, labels, k, 0.1) - _reference(z, labels, k, 0.1)) < 1e-9


def test_separable_vs_random_embeddings():
    labels = torch.arange(200) % 4
    clustered = F.normalize(F.one_hot(labels, 16).float() + 0.1 * torch.randn(200, 16), dim=1)
    shuffled = labels[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    assert knn_accuracy(clustered, labels, 10) == 1.0
    assert knn_accuracy(clustered, shuffled, 10) < 0.5


def test_probe_embeds_with_the_encoder_and_restores_train_mode():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(30, 1, 28, 28), dtype=np.uint8)
    cats = np.arange(30) % 3
    torch.manual_seed(0)
    enc = Encoder(build_backbone("convnet", 1, 28, width=4, stages=1, blocks=1), 8)
    probe = KnnProbe.sample(images, np.arange(30), cats, 20, seed=0, k=5)
    assert probe is not None and len(probe.images) == 20
    again = KnnProbe.sample(images, np.arange(30), cats, 20, seed=0, k=5)
    assert torch.equal(probe.categories, again.categories)
    enc.train()
    acc = probe.accuracy(enc)
    assert enc.training and 0.0 <= acc <= 1.0
    z = F.normalize(probe.embed(enc.eval()), dim=1)  # accuracy embeds in eval mode
    assert acc == knn_accuracy(z, probe.categories, 5)
    assert KnnProbe.sample(images, np.arange(1), cats[:1], 5, seed=0) is None
