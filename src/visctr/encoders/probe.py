"""Online kNN category probe (as in solo-learn): how well embeddings separate categories.

After each epoch a fixed subset of catalog items is embedded and each item's category is
predicted by a similarity-weighted vote of its k nearest *other* items (leave-one-out,
weights ``exp(cos / 0.07)``, Wu et al. 2018). Cheap, label-free during training, and
comparable across stages.
"""

from __future__ import annotations

import numpy as np
import torch

from visctr.encoders.backbones import Encoder


class KnnProbe:
    def __init__(
        self,
        images: np.ndarray,
        categories: np.ndarray,
        k: int = 20,
        batch_size: int = 1024,
        temperature: float = 0.07,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.categories = torch.from_numpy(np.asarray(categories, dtype=np.int64))
        self.k, self.batch_size, self.temperature = k, batch_size, temperature

    @classmethod
    def sample(
        cls,
        images: np.ndarray,
        rows: np.ndarray,
        categories: np.ndarray,
        n: int,
        seed: int,
        k: int = 20,
    ) -> KnnProbe | None:
        """A probe over ``n`` items drawn with ``seed`` (None when n < 2)."""
        n = min(n, len(rows))
        if n < 2:
            return None
        pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[:n])
        return cls(images[rows[pick]], categories[pick], k)

    @torch.no_grad()
    def embed(self, encoder: Encoder) -> torch.Tensor:
        dev = next(encoder.parameters()).device
        out = [
            encoder.encode(self.images[s : s + self.batch_size].to(dev)).float().cpu()
            for s in range(0, len(self.images), self.batch_size)
        ]
        return torch.cat(out)

    def accuracy(self, encoder: Encoder) -> float:
        was_training = encoder.training
        encoder.eval()
        try:
            z = self.embed(encoder)
        finally:
            encoder.train(was_training)
        return knn_accuracy(z, self.categories, self.k, self.temperature)


def knn_accuracy(
    z: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    temperature: float = 0.07,
) -> float:
    """Leave-one-out weighted kNN accuracy of L2-normalised embeddings ``z [N, D]``."""
    n = len(z)
    k = min(k, n - 1)
    n_cls = int(labels.max()) + 1
    correct = 0
    for s in range(0, n, 1024):
        sim = z[s : s + 1024] @ z.T
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + s] = float("-inf")  # leave the item itself out
        top, idx = sim.topk(k, dim=1)
        w = torch.exp(top / temperature)
        votes = torch.zeros(sim.shape[0], n_cls).scatter_add_(1, labels[idx], w)
        correct += int((votes.argmax(1) == labels[s : s + 1024]).sum())
    return correct / n
