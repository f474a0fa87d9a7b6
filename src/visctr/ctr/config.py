"""Configuration of the CTR model and its training; S3's own (``ctr.debias``) is
:class:`visctr.s3.config.DebiasConfig`.

Defaults are sized for CPU: on the ``small`` world (~200-400k training impressions) the
six methods' CTR models train together in a few minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from visctr.s3.config import DebiasConfig
from visctr.train import TrainerConfig


@dataclass
class IPSConfig:
    """Inverse-propensity weighting of the CTR loss (the standard debiasing baseline).

    Propensity of a logged impression = P(examined | position) × exposure of the item,
    both estimated from the fit part of the training logs: the position term is the
    click rate at the position over the click rate at the top slot (monotone, at most 1);
    the exposure term is the item's impression count over the mean count of shown items.
    Weight = 1 / propensity, clipped to [1/clip, clip] and normalised to mean 1 per batch
    (self-normalised IPS), so the loss keeps its scale.
    """

    enabled: bool = False
    clip: float = 10.0
    exposure: bool = True  # include the item-exposure term (False: position only)

    def __post_init__(self) -> None:
        if self.clip < 1:
            raise ValueError(f"ips.clip must be >= 1, got {self.clip}")


@dataclass
class CTRConfig:
    """CTR model, features and training. Validation = the last share of the training period."""

    # features
    field_dim: int = 16  # embedding width of every sparse field
    use_item_id: bool = False  # item-id embedding (off: lets head items be memorised)
    max_position: int = 50  # positions >= this share one bucket
    pop_buckets: int = 16  # log2-scale buckets of training impression counts
    affinity_smoothing: float = 5.0  # pseudo-clicks of the global category prior
    # model
    arch: str = "dcnv2"  # the network: a key of visctr.ctr.model.ARCHS (an open registry)
    cross_layers: int = 1  # DCNv2 cross layers over [field embeddings, cos, affinity]
    cross_rank: int = 16  # low-rank W = U·V (0 = full rank)
    mlp: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.0
    # training
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    max_epochs: int = 8
    patience: int = 2  # epochs without validation-AUC gain before stopping
    validation_share: float = 0.1  # last share of the training *time span*, never test
    max_validation_rows: int = 500_000  # exact AUC holds predictions: cap what it scores
    shuffle_buffer: int = 200_000  # rows shuffled together while streaming
    read_rows: int = 65_536  # rows per Parquet read
    inner_steps: int = 8  # optimiser steps per Lightning training_step (amortises its overhead)
    # torch.compile the training forward/backward: ~10-13% more samples/s on CPU once
    # compiled, but compiling takes 2-16 s here (and a C++ compiler on CPU), so it
    # pays off on logs of millions of rows; a small-preset CTR model trains in ~10 s
    compile: bool = False
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    ips: IPSConfig = field(default_factory=IPSConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        sizes = (self.field_dim, self.batch_size, self.max_epochs, self.max_validation_rows,
                 self.inner_steps)  # fmt: skip
        if min(sizes) < 1:
            raise ValueError("field_dim, batch_size, max_epochs, max_validation_rows and "
                             "inner_steps must be >= 1")  # fmt: skip
        if not 0.0 <= self.validation_share < 1.0:
            raise ValueError(f"validation_share must be in [0, 1), got {self.validation_share}")
        if self.cross_layers < 0 or self.cross_rank < 0 or self.patience < 0:
            raise ValueError("cross_layers, cross_rank and patience must be >= 0")
        if self.pop_buckets < 2 or self.max_position < 1:
            raise ValueError("pop_buckets must be >= 2 and max_position >= 1")
        if not self.mlp or any(h < 1 for h in self.mlp):
            raise ValueError(f"mlp sizes must be >= 1, got {self.mlp}")
