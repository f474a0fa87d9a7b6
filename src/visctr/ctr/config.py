"""Configuration of the CTR model, its training and the S3 debias network.

Defaults are sized for CPU: on the ``small`` world (~200-400k training impressions) the
six methods' CTR models train together in a few minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from visctr.train import TrainerConfig


@dataclass
class DebiasConfig:
    """S3: debias network + gate, trained with ``BCE + weight·L_triplet`` (+
    ``align_weight·L_align + relational_weight·L_relational`` when on)."""

    enabled: bool = False
    weight: float = 0.5  # λ in L = L_ctr + λ·L_triplet
    margin: float = 0.2  # cosine margin: cos(a, n) + margin <= cos(a, p)
    head_share: float = 0.2  # anchors: top share of items by training impressions
    k_neighbours: int = 10  # positives: k nearest tail items to the anchor in S1 space
    k_far: int = 50  # negatives per anchor (see `negatives`)
    # "farthest": the k_far farthest tail items in S1 space. "hard": the k_far tail items
    # nearest the anchor in the *method's* space among those outside its `neighbourhood`
    # nearest in S1 space, where the method's space disagrees with the reference. On the
    # small world the farthest ones are separated from the first step (triplet loss ~5e-4)
    # while hard ones give a real loss (~0.07), yet on a dev world (seed 100) "hard" lowered
    # HR@10 (0.536 vs 0.551) without helping random-exposure AUC (0.697 vs 0.700), so the
    # default stays "farthest"; on the exposure-bias world's dev world too (random-exposure
    # AUC 0.754 vs 0.767, HR@10 0.502 vs 0.530). See README, "Tuning".
    # "disagreement": triplets where the *current debiased* space disagrees with S1, mined
    # again every `remine_every` steps from the DebiasNet as it trains (see
    # visctr.ctr.debias.DisagreementMiner): positive = the anchor's S1-nearest tail item
    # farthest from it in the debiased space, negative = a tail item outside its S1
    # `neighbourhood` among its nearest in the debiased space; only triplets within the
    # margin or violated when mined are kept, so every one has a gradient.
    negatives: Literal["hard", "farthest", "disagreement"] = "farthest"
    neighbourhood: int = 100  # S1 neighbours of an anchor that never serve as its negatives
    triplets_per_step: int = 256
    remine_every: int = 100  # training steps between two minings (negatives: disagreement)
    stop_anchor_grad: bool = False  # the anchor's d without gradient: tail moves toward head
    # negatives: disagreement only: also mine the mirror direction (a tail anchor, a head
    # positive among its S1 neighbours, a head negative outside them); the pool holds the
    # kept triplets of both directions
    mirror: bool = False
    # Head/tail alignment of the debiased vectors (ESAM's CORAL, CD²AN's MMD): each step a
    # batch of `align_batch` head items and one of tail items drawn from the whole catalog
    # (never-shown items included); `align_weight` multiplies the term. The head side is
    # detached (CD²AN's stop-gradient from the exposed side): the tail moves toward it.
    align: Literal["none", "coral", "mmd"] = "none"
    align_weight: float = 1.0
    align_batch: int = 256
    # S1 relational anchor over the alignment batch: mean over pairs of
    # (cos(d_i, d_j) − cos(s1_i, s1_j))², so that alignment does not collapse semantics
    relational_weight: float = 0.0
    # The gate also sees the item's popularity bucket of training impressions (ctr.pop_buckets,
    # as the CTR model's pop_bucket field; queries get a row of their own), so it can lean
    # on the debiased vector where the logs are thin. debias.pt then stores each item's
    # bucket, and serving maps items by id (DebiasTransform.items).
    gate_exposure: bool = False
    hidden: int = 128  # hidden width of the residual MLP
    # Which vector retrieval uses (exported by debias.pt / apply_debias): the gated fusion
    # g·v + (1−g)·d that the CTR model itself consumes, or the debiased vector d alone.
    retrieval_vector: Literal["gated", "debiased"] = "gated"

    def __post_init__(self) -> None:
        if not 0.0 < self.head_share < 1.0:
            raise ValueError(f"debias.head_share must be in (0, 1), got {self.head_share}")
        if min(self.k_neighbours, self.k_far, self.triplets_per_step) < 1:
            raise ValueError("debias.k_neighbours, k_far and triplets_per_step must be >= 1")
        if self.neighbourhood < self.k_neighbours:
            raise ValueError("debias.neighbourhood must be >= debias.k_neighbours")
        if self.negatives not in ("hard", "farthest", "disagreement"):
            raise ValueError(
                f"debias.negatives must be hard, farthest or disagreement, got {self.negatives!r}"
            )
        if self.align not in ("none", "coral", "mmd"):
            raise ValueError(f"debias.align must be none, coral or mmd, got {self.align!r}")
        if min(self.weight, self.margin, self.align_weight, self.relational_weight) < 0:
            raise ValueError(
                "debias.weight, margin, align_weight and relational_weight must be >= 0"
            )
        if self.mirror and self.negatives != "disagreement":
            raise ValueError("debias.mirror needs debias.negatives: disagreement")
        if self.remine_every < 1 or self.align_batch < 2:
            raise ValueError("debias.remine_every must be >= 1 and debias.align_batch >= 2")

    @property
    def triplets(self) -> bool:
        """Whether the triplet term is on (it needs the S1 reference to mine from)."""
        return self.weight > 0

    @property
    def aligns(self) -> bool:
        """Whether a head/tail term is on (alignment or the relational anchor)."""
        return (self.align != "none" and self.align_weight > 0) or self.relational_weight > 0

    @property
    def needs_reference(self) -> bool:
        """Whether training reads the S1 reference (triplets, relational anchor); a head
        trained by the click loss alone (S1+S2+H) does not."""
        return self.triplets or self.relational_weight > 0


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
