"""The image-encoder side of visctr.

- S1 :func:`pretrain`: self-supervised, a plug-in objective (:mod:`.objectives`) on all
  catalog images,
- S2 :func:`finetune`: click-supervised contrastive + ``lambda_s1`` × S1,
- ResNet-C :func:`classify`: category cross-entropy baseline,
- :func:`embed`: item and query embeddings to Parquet, :func:`load_encoder`.

Building blocks usable alone: :mod:`.backbones`, :mod:`.augment`, :mod:`.objectives`,
:mod:`.methods`, :mod:`visctr.losses`.
"""

from visctr.encoders.augment import AugmentConfig, augment
from visctr.encoders.backbones import Encoder, build_backbone
from visctr.encoders.checkpoint import build_encoder, load_encoder
from visctr.encoders.config import (
    ClassifyConfig,
    EncoderConfig,
    S1Config,
    S1ObjectiveConfig,
    S2Config,
    StageConfig,
)
from visctr.encoders.export import embed
from visctr.encoders.stages import classify, finetune, pretrain

__all__ = [
    "AugmentConfig",
    "ClassifyConfig",
    "Encoder",
    "EncoderConfig",
    "S1Config",
    "S1ObjectiveConfig",
    "S2Config",
    "StageConfig",
    "augment",
    "build_backbone",
    "build_encoder",
    "classify",
    "embed",
    "finetune",
    "load_encoder",
    "pretrain",
]
