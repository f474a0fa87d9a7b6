"""SimSiam (Chen & He, CVPR 2021): projector (2-layer MLP, BN on the output) and a
bottleneck predictor; symmetric negative cosine with stop-gradient, no negatives."""

from __future__ import annotations

import torch
from torch import nn

from visctr.encoders.config import S1ObjectiveConfig
from visctr.encoders.objectives.base import S1Objective, TwoViews, mlp, register
from visctr.losses.simsiam import simsiam_loss


@register("simsiam")
class SimSiam(S1Objective):
    def __init__(self, cfg: S1ObjectiveConfig, embed_dim: int, encoder: nn.Module) -> None:
        super().__init__(cfg, embed_dim, encoder)
        self.projector = mlp([embed_dim, cfg.proj_dim, cfg.proj_dim], last_bn=True)
        self.predictor = mlp([cfg.proj_dim, cfg.pred_dim, cfg.proj_dim])

    def forward(self, views: TwoViews) -> torch.Tensor:
        b = views.e1.shape[0]
        z = self.projector(torch.cat([views.e1, views.e2]))
        p = self.predictor(z)
        return simsiam_loss(p[:b], p[b:], z[:b], z[b:])
