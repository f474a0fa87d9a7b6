"""visctr: fine-grained, unbiased image embeddings for CTR prediction in visual search.

The front door. Every name below is imported on first use, so ``import visctr`` stays fast
(no torch until a name needs it)::

    import visctr

    enc = visctr.load_encoder("runs/demo/seed_0/encoders/s1_s2/encoder.pt")
    vectors = visctr.embed(enc, ["shoe.jpg", "bag.png"])      # [2, D], unit rows

    world = visctr.World.load("worlds/shop")                  # a simulated or imported world
    s1 = visctr.pretrain(world, visctr.S1Config(), "out/s1", seed=0)
    s2 = visctr.finetune(world, visctr.S2Config(), "out/s2", seed=0, init=s1)
    results = visctr.run("tiny", out="runs/tiny")            # everything `visctr run` does

The stages as LightningModules, to train on your own DataLoader: :class:`S1Method` (batches
``{"image": uint8 [B, C, H, W]}``) and :class:`S2Method` (see its docstring).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562)
_EXPORTS: dict[str, str] = {
    # data
    "World": "visctr.world.store",
    "SimConfig": "visctr.world.simulate",
    "simulate": "visctr.world.simulate",
    # encoders
    "Encoder": "visctr.encoders.backbones",
    "load_encoder": "visctr.encoders.checkpoint",
    "embed": "visctr.encoders.photos",
    "pretrain": "visctr.encoders.stages",
    "finetune": "visctr.encoders.stages",
    "classify": "visctr.encoders.stages",
    "S1Config": "visctr.encoders.config",
    "S2Config": "visctr.encoders.config",
    "ClassifyConfig": "visctr.encoders.config",
    "EncoderConfig": "visctr.encoders.config",
    "S1Method": "visctr.encoders.methods.s1",
    "S2Method": "visctr.encoders.methods.s2",
    # CTR and S3
    "train_ctr": "visctr.ctr.training",
    "CTRConfig": "visctr.ctr.config",
    "DebiasConfig": "visctr.s3.config",
    "apply_debias": "visctr.s3.artifact",
    "DebiasTransform": "visctr.s3.artifact",
    # the whole pipeline
    "run": "visctr.pipeline.run",
    "RunConfig": "visctr.pipeline.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'visctr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
