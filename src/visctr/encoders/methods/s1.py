"""S1: self-supervised pre-training, SimSiam (default) or InfoNCE over two augmented views."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visctr.encoders.augment import AugmentConfig, augment
from visctr.encoders.backbones import Encoder
from visctr.encoders.config import S1Config
from visctr.encoders.methods.base import EncoderMethod, mlp
from visctr.encoders.probe import KnnProbe
from visctr.losses import info_nce_loss, simsiam_loss


class S1Objective(nn.Module):
    """Heads + loss of the S1 objective on two views' embeddings.

    ``simsiam``: projector (2-layer MLP, BN on the output) and predictor (bottleneck MLP),
    symmetric negative cosine with stop-gradient. ``infonce``: projector, NT-Xent.
    """

    def __init__(
        self,
        embed_dim: int,
        method: str = "simsiam",
        proj_dim: int = 256,
        pred_dim: int = 64,
        temperature: float = 0.2,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if method not in ("simsiam", "infonce"):
            raise ValueError(f"unknown S1 method {method!r} (simsiam | infonce)")
        self.method, self.temperature, self.gather = method, temperature, gather
        if method == "simsiam":
            self.projector = mlp([embed_dim, proj_dim, proj_dim], last_bn=True)
            self.predictor = mlp([proj_dim, pred_dim, proj_dim])
        else:
            self.projector = mlp([embed_dim, proj_dim, proj_dim])
            self.predictor = nn.Identity()

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        b = e1.shape[0]
        z = self.projector(torch.cat([e1, e2]))
        z1, z2 = z[:b], z[b:]
        if self.method == "simsiam":
            p = self.predictor(z)
            return simsiam_loss(p[:b], p[b:], z1, z2)
        return info_nce_loss(z1, z2, self.temperature, gather=self.gather)


def two_view_embeddings(
    encoder: Encoder, images: torch.Tensor, aug: AugmentConfig, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed two augmented views of ``images`` in one forward pass."""
    v1 = augment(images, aug, g)
    v2 = augment(images, aug, g)
    e = encoder(torch.cat([v1, v2]))
    return e[: len(images)], e[len(images) :]


class S1Method(EncoderMethod):
    def __init__(
        self, encoder: Encoder, cfg: S1Config, seed: int, probe: KnnProbe | None = None
    ) -> None:
        super().__init__(encoder, cfg, seed, probe)
        self.objective = S1Objective(
            encoder.embed_dim, cfg.method, cfg.proj_dim, cfg.pred_dim, cfg.temperature
        )

    def step_loss(self, batch: dict[str, Any]):
        e1, e2 = two_view_embeddings(
            self.encoder, batch["image"], self.cfg.augment, self.generator()
        )
        return self.objective(e1, e2), {}

    def heads_state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "s1": self.objective.state_dict(),
            "s1_spec": {
                "method": self.cfg.method,
                "proj_dim": self.cfg.proj_dim,
                "pred_dim": self.cfg.pred_dim,
            },
        }
