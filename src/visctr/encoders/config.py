"""Typed configs of the encoder stages (loadable with :func:`visctr.config.from_dict`).

Defaults are CPU-friendly: on the ``small`` world (6,000 items of 28×28, ~20k training
clicks) S1, S2 (scratch), S1+S2 and ResNet-C together train in minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from visctr.encoders.augment import AugmentConfig
from visctr.train import TrainerConfig


@dataclass
class EncoderConfig:
    """The network whose output is the exported embedding."""

    # convnet | resnet18 | resnet50 | torchvision:<name> | timm:<name> (visctr[timm])
    backbone: str = "convnet"
    embed_dim: int | None = 64  # linear projection after the backbone (None: backbone features)
    width: int = 16  # convnet: channels of the first stage (doubling per stage)
    stages: int = 3  # convnet
    blocks: int = 2  # convnet: conv layers per stage
    small_stem: bool = True  # visctr's resnets: 3x3 stride-1 stem, no max-pool (small images)
    # pretrained backbone weights: a local .pth / .pt / .safetensors state dict (its
    # classifier dropped), or a torchvision weights enum (IMAGENET1K_V2) from torch's cache
    weights: str | None = None

    def __post_init__(self) -> None:
        from visctr.encoders.backbones import check_backbone_name

        if self.embed_dim is not None and self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        check_backbone_name(self.backbone)
        if self.weights is not None and not str(self.weights).strip():
            raise ValueError("weights must be a file or a torchvision weights name, not empty")

    def backbone_kwargs(self) -> dict:
        if self.backbone == "convnet":
            return {"width": self.width, "stages": self.stages, "blocks": self.blocks}
        if self.backbone in ("resnet18", "resnet50"):
            return {"small_stem": self.small_stem}
        return {}


@dataclass
class StageConfig:
    """Settings every encoder stage shares: optimisation, data loading, online probe."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    epochs: int = 10
    batch_size: int = 256
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3  # peak learning rate (linear warm-up, cosine decay per step)
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    num_workers: int = 0  # DataLoader workers (batches are fetched whole; 0 is fast on CPU)
    probe_items: int = 2000  # online kNN category probe: items embedded after each epoch
    probe_k: int = 20
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class S1ObjectiveConfig:
    """The S1 objective: which registered method, the sizes of its heads, its loss settings.

    One dataclass for S1 (``s1.objective``) and for the λ·L_S1 term of S2 (``s2.s1``);
    ``method`` names an objective in :data:`visctr.encoders.objectives.OBJECTIVES`.
    """

    method: str = "simsiam"  # a registered objective (visctr.encoders.objectives)
    proj_dim: int = 256  # projector output
    pred_dim: int = 64  # predictor bottleneck (objectives with a predictor)
    temperature: float = 0.2  # contrastive objectives (infonce)
    momentum: float = 0.99  # EMA of a target network per optimiser step (byol)

    def __post_init__(self) -> None:
        # ``method`` is checked where the objective is built (objectives.objective_class),
        # as ctr.arch is: the registry's modules import this one
        if self.proj_dim < 1 or self.pred_dim < 1:
            raise ValueError(
                f"proj_dim and pred_dim must be >= 1, got {self.proj_dim}, {self.pred_dim}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")


@dataclass
class S1Config(StageConfig):
    """S1: self-supervised pre-training on every catalog image (unbiased).

    Files written for the flat layout (``method``, ``temperature``, ``proj_dim``,
    ``pred_dim`` in the section itself) still load: those keys are read into
    ``objective`` and win over it (they come from a user file, which overrides presets).
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {
        k: f"objective.{k}" for k in ("method", "temperature", "proj_dim", "pred_dim")
    }

    epochs: int = 12
    objective: S1ObjectiveConfig = field(default_factory=S1ObjectiveConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class S2Config(StageConfig):
    """S2: click-supervised contrastive fine-tuning (+ ``lambda_s1`` × the S1 loss).

    ``s1`` is the objective of the λ·L_S1 term. Starting from an S1 encoder, it must match
    the objective the encoder was pre-trained with (its heads are continued; a mismatch
    is an error). The flat keys of older files (``s1_method``, ``s1_temperature``,
    ``proj_dim``, ``pred_dim``) are read into ``s1`` and win over it.
    """

    LEGACY_KEYS: ClassVar[dict[str, str]] = {
        "s1_method": "s1.method",
        "s1_temperature": "s1.temperature",
        "proj_dim": "s1.proj_dim",
        "pred_dim": "s1.pred_dim",
    }

    epochs: int = 3
    lr: float = 1e-3
    temperature: float = 0.1
    extra_negatives: int = 128  # catalog items drawn per step as extra negatives
    same_category_share: float = 0.5  # of the extra negatives, share from the batch's categories
    negatives_grad: bool = False  # backprop through the extra negatives (costlier)
    # where the extra negatives come from: the whole catalog, or only items the training
    # log shows (items.parquet train_impressions > 0: what a production system that knows
    # only its logged items would draw)
    negatives_from: Literal["catalog", "exposed"] = "catalog"
    lambda_s1: float = 0.5  # weight of the S1 term over random catalog batches (0: clicks only)
    s1: S1ObjectiveConfig = field(default_factory=S1ObjectiveConfig)
    s1_batch_size: int = 64
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pair_flip: bool = True  # random horizontal flip of query and item images (same flip per pair)
    # click pairs held to shuffle the streamed log (24 bytes each); all of a smaller log's
    # clicks are permuted at once
    shuffle_buffer: int = 262_144

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_s1 < 0:
            raise ValueError(f"lambda_s1 must be >= 0, got {self.lambda_s1}")
        if not 0 <= self.same_category_share <= 1:
            raise ValueError("same_category_share must be in [0, 1]")
        if self.extra_negatives < 0:
            raise ValueError("extra_negatives must be >= 0")
        if self.negatives_from not in ("catalog", "exposed"):
            raise ValueError(
                f"negatives_from must be 'catalog' or 'exposed', got {self.negatives_from!r}"
            )
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


def _mild_augment() -> AugmentConfig:
    return AugmentConfig(crop_min_scale=0.6, jitter_p=0.0, blur_p=0.0, erase_p=0.0)


@dataclass
class ClassifyConfig(StageConfig):
    """ResNet-C: the category-supervised baseline (cross-entropy on item categories)."""

    epochs: int = 10
    label_smoothing: float = 0.0
    augment: AugmentConfig = field(default_factory=_mild_augment)
