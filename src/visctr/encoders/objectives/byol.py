"""BYOL (Grill et al., NeurIPS 2020): an online projector + predictor regress the
projection of the other view by a target encoder + projector, which follow the online
ones as an exponential moving average (``momentum`` per optimiser step), no negatives.

The target is a copy of the encoder made when the objective is built; as a submodule it
is in the training checkpoint (resume) and in the saved heads (S2 continues it).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from visctr.encoders.config import S1ObjectiveConfig
from visctr.encoders.objectives.base import S1Objective, TwoViews, mlp, register
from visctr.losses.byol import byol_loss


@register("byol")
class BYOL(S1Objective):
    def __init__(self, cfg: S1ObjectiveConfig, embed_dim: int, encoder: nn.Module) -> None:
        super().__init__(cfg, embed_dim, encoder)
        self.projector = mlp([embed_dim, cfg.proj_dim, cfg.proj_dim])
        self.predictor = mlp([cfg.proj_dim, cfg.pred_dim, cfg.proj_dim])
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)

    def forward(self, views: TwoViews) -> torch.Tensor:
        b = views.e1.shape[0]
        p = self.predictor(self.projector(torch.cat([views.e1, views.e2])))
        with torch.no_grad():
            z = self.target_projector(self.target_encoder(torch.cat([views.x1, views.x2])))
        return byol_loss(p[:b], p[b:], z[:b], z[b:])

    @torch.no_grad()
    def after_optimizer_step(self, encoder: nn.Module) -> None:
        """``target = momentum · target + (1 - momentum) · online``, parameter-wise."""
        pairs = ((encoder, self.target_encoder), (self.projector, self.target_projector))
        for online, target in pairs:
            for po, pt in zip(online.parameters(), target.parameters(), strict=True):
                pt.lerp_(po.detach(), 1.0 - self.cfg.momentum)
