"""Pure loss functions, one file per loss, usable in plain PyTorch (no Lightning)."""

from visctr.losses.classification import category_cross_entropy
from visctr.losses.click import click_contrastive_loss, false_negative_mask, pair_keys
from visctr.losses.coral import coral
from visctr.losses.distributed import gather_with_grad
from visctr.losses.infonce import info_nce_loss
from visctr.losses.mmd import mmd
from visctr.losses.relational import relational
from visctr.losses.simsiam import negative_cosine, simsiam_loss
from visctr.losses.triplet import triplet_hinge, triplet_loss

__all__ = [
    "category_cross_entropy",
    "click_contrastive_loss",
    "coral",
    "false_negative_mask",
    "gather_with_grad",
    "info_nce_loss",
    "mmd",
    "negative_cosine",
    "pair_keys",
    "relational",
    "simsiam_loss",
    "triplet_hinge",
    "triplet_loss",
]
