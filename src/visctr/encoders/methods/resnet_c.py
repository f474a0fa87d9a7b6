"""ResNet-C: the baseline encoder trained with category labels (cross-entropy)."""

from __future__ import annotations

from typing import Any

from torch import nn

from visctr.encoders.augment import augment
from visctr.encoders.backbones import Encoder
from visctr.encoders.config import ClassifyConfig
from visctr.encoders.methods.base import EncoderMethod
from visctr.encoders.probe import KnnProbe
from visctr.losses import category_cross_entropy


class ResNetCMethod(EncoderMethod):
    def __init__(
        self,
        encoder: Encoder,
        cfg: ClassifyConfig,
        seed: int,
        n_categories: int,
        probe: KnnProbe | None = None,
    ) -> None:
        super().__init__(encoder, cfg, seed, probe)
        self.classifier = nn.Linear(encoder.embed_dim, n_categories)

    def step_loss(self, batch: dict[str, Any]):
        x = augment(batch["image"], self.cfg.augment, self.generator())
        logits = self.classifier(self.encoder(x))
        loss = category_cross_entropy(logits, batch["category"], self.cfg.label_smoothing)
        acc = (logits.argmax(1) == batch["category"]).float().mean()
        return loss, {"train_acc": acc}
