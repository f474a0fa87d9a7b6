"""InfoNCE / NT-Xent (SimCLR, Chen et al., ICML 2020): a projector and the contrastive
loss against every other view of the batch (gathered across DDP ranks)."""

from __future__ import annotations

import torch
from torch import nn

from visctr.encoders.config import S1ObjectiveConfig
from visctr.encoders.objectives.base import S1Objective, TwoViews, mlp, register
from visctr.losses.infonce import info_nce_loss


@register("infonce")
class InfoNCE(S1Objective):
    head_fields = ("proj_dim",)

    def __init__(self, cfg: S1ObjectiveConfig, embed_dim: int, encoder: nn.Module) -> None:
        super().__init__(cfg, embed_dim, encoder)
        self.projector = mlp([embed_dim, cfg.proj_dim, cfg.proj_dim])

    def forward(self, views: TwoViews) -> torch.Tensor:
        b = views.e1.shape[0]
        z = self.projector(torch.cat([views.e1, views.e2]))
        return info_nce_loss(z[:b], z[b:], self.cfg.temperature, gather=True)
