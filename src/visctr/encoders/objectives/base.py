"""The S1 objective interface and its open registry.

An objective is an ``nn.Module`` holding the heads of one self-supervised method (and a
target network if it has one), built from its :class:`S1ObjectiveConfig` and the
encoder; :meth:`S1Objective.forward` turns two augmented views into the loss. S1 and
the λ·L_S1 term of S2 both use it. A new method is one file with a subclass decorated
by :func:`register`, its loss in :mod:`visctr.losses`, and its import in this package's
``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

from visctr.config import to_dict
from visctr.errors import ConfigError

if TYPE_CHECKING:
    from visctr.encoders.config import S1ObjectiveConfig


class TwoViews(NamedTuple):
    """Two augmented views of one batch of images and their embeddings by the encoder."""

    x1: torch.Tensor  # [B, C, H, W]
    x2: torch.Tensor
    e1: torch.Tensor  # [B, D]
    e2: torch.Tensor


class S1Objective(nn.Module):
    """Heads + loss of one S1 method on two views.

    ``head_fields``: the config fields that shape the saved heads; S2 continues the heads
    of a pre-trained encoder only if the method and these fields match.
    """

    name: ClassVar[str] = ""
    head_fields: ClassVar[tuple[str, ...]] = ("proj_dim", "pred_dim")

    def __init__(self, cfg: S1ObjectiveConfig, embed_dim: int, encoder: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, views: TwoViews) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def after_optimizer_step(self, encoder: nn.Module) -> None:
        """Called after every optimiser step with the online encoder (e.g. EMA targets)."""

    def spec(self) -> dict[str, Any]:
        """What the method's ``heads_state`` saves as ``s1_spec``: the objective's config."""
        return to_dict(self.cfg)


OBJECTIVES: dict[str, type[S1Objective]] = {}


def register(name: str) -> Callable[[type[S1Objective]], type[S1Objective]]:
    """Class decorator: make an :class:`S1Objective` selectable as ``method: name``."""

    def add(cls: type[S1Objective]) -> type[S1Objective]:
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"S1 objective {name!r} is registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return add


def objective_class(name: str, where: str = "method") -> type[S1Objective]:
    """The registered objective ``name``; a ``ConfigError`` naming the field ``where`` and
    the registered ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"{where}: unknown S1 objective {name!r} (registered: {', '.join(sorted(OBJECTIVES))})"
        ) from None


def build_objective(
    cfg: S1ObjectiveConfig, encoder: nn.Module, where: str = "method"
) -> S1Objective:
    """The objective ``cfg.method`` for ``encoder`` (weights from the current torch RNG);
    ``where``: the config field that names it, for the error on an unknown name."""
    return objective_class(cfg.method, where)(cfg, encoder.embed_dim, encoder)


def head_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a saved ``s1_spec`` that decides whether its heads can be continued."""
    cls = OBJECTIVES.get(spec.get("method", ""))
    fields = cls.head_fields if cls is not None else ("proj_dim", "pred_dim")
    return {"method": spec.get("method"), **{f: spec.get(f) for f in fields}}


def mlp(dims: list[int], last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU layers; the last layer plain Linear (+ BN when ``last_bn``)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not (last and last_bn) and last))
        if not last:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
    return nn.Sequential(*layers)
