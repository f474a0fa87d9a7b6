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
    """S1 as a LightningModule: trains ``encoder`` on any DataLoader of images.

    Args:
        encoder: the :class:`~visctr.encoders.backbones.Encoder` to train (in place).
        cfg: :class:`~visctr.encoders.config.S1Config`: the objective (``objective.method``
            simsiam | infonce | byol), augmentations, optimiser and schedule.
        seed: fixes every augmentation draw (by seed and global step).
        probe: an optional online kNN probe, logged per epoch in ``history``.

    A batch is a dict ``{"image": images}``: uint8 ``[B, C, H, W]`` (or float in [0, 1]);
    two augmented views of each image are the positive pair. The trained weights are in
    ``method.encoder``; ``method.history`` holds one row per epoch.

    Example:
        >>> import lightning as L, torch, visctr
        >>> from visctr.encoders.checkpoint import build_encoder
        >>> enc = build_encoder(visctr.EncoderConfig(width=8), in_channels=1, image_size=28)
        >>> images = torch.randint(0, 255, (64, 1, 28, 28), dtype=torch.uint8)
        >>> loader = torch.utils.data.DataLoader([{"image": x} for x in images], batch_size=32)
        >>> cfg = visctr.S1Config(epochs=1)  # SimSiam; objective.method: infonce as in run
        >>> L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
        ...           enable_progress_bar=False, enable_model_summary=False
        ...           ).fit(visctr.S1Method(enc, cfg, seed=0), loader)
        >>> len(visctr.S1Method.__mro__) > 0 and enc.training
        True
    """

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
