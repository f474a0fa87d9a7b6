"""Fixtures of the encoder tests: tiny, fast stage configs on the shared tiny world."""

from __future__ import annotations

import pytest

from visctr.encoders import (
    ClassifyConfig,
    EncoderConfig,
    S1Config,
    S1ObjectiveConfig,
    S2Config,
)
from visctr.train import TrainerConfig
from visctr.world import World


def tiny_trainer(**kw) -> TrainerConfig:
    return TrainerConfig(accelerator="cpu", progress_bar=False, checkpoint_every_n_steps=2, **kw)


TINY_ENCODER = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=16)


def _tiny(cls, **kw):
    """A stage config small enough for a test: shared settings, then the stage's, then kw."""
    base = dict(encoder=TINY_ENCODER, epochs=3, batch_size=64, lr=3e-3, probe_items=200,
                trainer=tiny_trainer())  # fmt: skip
    return cls(**{**base, **kw})


def tiny_objective(method: str = "simsiam", **kw) -> S1ObjectiveConfig:
    return S1ObjectiveConfig(method=method, **{"proj_dim": 32, "pred_dim": 16, **kw})


def s1_config(method: str = "simsiam", **kw) -> S1Config:
    return _tiny(S1Config, **{"objective": tiny_objective(method), **kw})


def s2_config(method: str = "simsiam", **kw) -> S2Config:
    extra = {"s1": tiny_objective(method), "s1_batch_size": 32, "extra_negatives": 32}
    return _tiny(S2Config, **{**extra, **kw})


def classify_config(**kw) -> ClassifyConfig:
    return _tiny(ClassifyConfig, **kw)


@pytest.fixture(scope="session")
def tiny_world(tiny_world_dir) -> World:
    return World.load(tiny_world_dir)
