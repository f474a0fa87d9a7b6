"""S1: self-supervised pre-training with a plug-in objective (:mod:`visctr.encoders.objectives`)
over two augmented views of every catalog image; SimSiam by default."""

from __future__ import annotations

from typing import Any

import torch

from visctr.encoders.augment import AugmentConfig, augment
from visctr.encoders.backbones import Encoder
from visctr.encoders.config import S1Config
from visctr.encoders.methods.base import EncoderMethod
from visctr.encoders.objectives import TwoViews, build_objective
from visctr.encoders.probe import KnnProbe


def two_view_embeddings(
    encoder: Encoder, images: torch.Tensor, aug: AugmentConfig, g: torch.Generator
) -> TwoViews:
    """Two augmented views of ``images``, embedded in one forward pass."""
    v1 = augment(images, aug, g)
    v2 = augment(images, aug, g)
    e = encoder(torch.cat([v1, v2]))
    return TwoViews(v1, v2, e[: len(images)], e[len(images) :])


class S1Method(EncoderMethod):
    def __init__(
        self, encoder: Encoder, cfg: S1Config, seed: int, probe: KnnProbe | None = None
    ) -> None:
        super().__init__(encoder, cfg, seed, probe)
        self.objective = build_objective(cfg.objective, encoder, "s1.objective.method")

    def step_loss(self, batch: dict[str, Any]):
        views = two_view_embeddings(
            self.encoder, batch["image"], self.cfg.augment, self.generator()
        )
        return self.objective(views), {}

    def after_optimizer_step(self) -> None:
        self.objective.after_optimizer_step(self.encoder)

    def heads_state(self) -> dict[str, dict[str, Any]]:
        return {"s1": self.objective.state_dict(), "s1_spec": self.objective.spec()}
