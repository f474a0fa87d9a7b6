"""S3's configuration, the ``ctr.debias`` section of a run config (the YAML key stays where
the debias network lives: inside the CTR model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
    # nearest in S1 space, where the method's space disagrees with the reference. Why the
    # default is "farthest": docs/results.md.
    # "disagreement": triplets where the *current debiased* space disagrees with S1, mined
    # again every `remine_every` steps from the DebiasNet as it trains (see
    # visctr.s3.mining.DisagreementMiner): positive = the anchor's S1-nearest tail item
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
