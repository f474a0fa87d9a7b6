"""The experiment as data: which encoders a run trains and which methods it compares.

``ENCODERS`` names each encoder recipe (its stage, what it starts from, its config);
``METHODS`` names each compared method (its encoder, its CTR variant, its unbiased
reference, its description). ``visctr run`` is a loop over these two tables, and
another method is one more :class:`Method` entry (plus its code, if its CTR variant or
encoder stage is new).

Descriptions are derived from the resolved config, so they say what actually ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EncoderStage:
    """How one kind of encoder is trained: the stage function and its config section."""

    section: str  # the RunConfig section holding its config (classify | s1 | s2)
    name: str  # the stage's name in its cache key (visctr.encoders.stages.stage_key)
    train: Callable[..., Path]  # train(world, cfg, out_dir, seed, init) -> encoder.pt


def _classify(world, cfg, out_dir, seed, init):
    from visctr.encoders import classify

    return classify(world, cfg, out_dir, seed)


def _pretrain(world, cfg, out_dir, seed, init):
    from visctr.encoders import pretrain

    return pretrain(world, cfg, out_dir, seed)


def _finetune(world, cfg, out_dir, seed, init):
    from visctr.encoders import finetune

    return finetune(world, cfg, out_dir, seed, init=init)


STAGES: dict[str, EncoderStage] = {
    "classify": EncoderStage("classify", "resnet_c", _classify),
    "pretrain": EncoderStage("s1", "s1", _pretrain),
    "finetune": EncoderStage("s2", "s2", _finetune),
}


@dataclass(frozen=True)
class EncoderRecipe:
    """One encoder a run trains: ``stage`` from ``init`` (another recipe) or from scratch.

    ``overrides``: fields replaced in the stage's config section (e.g. ``lambda_s1=0``
    for S2 from clicks only).
    """

    name: str  # folder under encoders/ and embeddings/
    stage: str  # key of STAGES
    init: str | None = None  # name of the recipe whose encoder initialises this one
    overrides: tuple[tuple[str, Any], ...] = ()

    def config(self, run_cfg: Any) -> Any:
        section = getattr(run_cfg, STAGES[self.stage].section)
        return dataclasses.replace(section, **dict(self.overrides)) if self.overrides else section

    def key(self, run_cfg: Any, seed: int, world: Any, init: Path | None) -> str:
        """The stage's cache key, the one the stage function itself checks: config (less
        the logger), seed, and the content of the world and of the ``init`` encoder."""
        from visctr.encoders.stages import stage_key

        return stage_key(STAGES[self.stage].name, self.config(run_cfg), seed, world, init=init)


@dataclass(frozen=True)
class Method:
    """One compared method: an encoder recipe, a CTR variant and, for S3, its reference."""

    name: str  # as in tables and results.json
    slug: str  # folder of its CTR model under ctr/
    encoder: str  # key of ENCODERS: the embeddings it retrieves with and feeds the CTR model
    ctr: str = "plain"  # key of CTR_VARIANTS
    reference: str | None = None  # key of ENCODERS: the unbiased reference (S3 triplets)
    describe: Callable[[Any], str] = lambda cfg: ""


def _ctr_variant(ctr_cfg: Any, debias: bool, ips: bool, **debias_fields: Any) -> Any:
    return dataclasses.replace(
        ctr_cfg,
        debias=dataclasses.replace(ctr_cfg.debias, enabled=debias, **debias_fields),
        ips=dataclasses.replace(ctr_cfg.ips, enabled=ips),
    )


# the S3 head trained by the click loss alone: every debiasing term off
_HEAD_ONLY = {"weight": 0.0, "align": "none", "relational_weight": 0.0}


# CTR variants: the run's ``ctr`` config section -> the config one method trains with
CTR_VARIANTS: dict[str, Callable[[Any], Any]] = {
    "plain": lambda c: _ctr_variant(c, debias=False, ips=False),
    "debias": lambda c: _ctr_variant(c, debias=True, ips=False),  # S3
    # S3's head and gate without its debiasing terms: the capacity control of S3
    "head": lambda c: _ctr_variant(c, debias=True, ips=False, **_HEAD_ONLY),
    "ips": lambda c: _ctr_variant(c, debias=False, ips=True),  # inverse-propensity weights
}


def _s1_objective(cfg: Any) -> str:
    from visctr.encoders.objectives import OBJECTIVES

    return OBJECTIVES[cfg.s1.objective.method].__name__  # the class name: SimSiam, InfoNCE, ...


ENCODERS: dict[str, EncoderRecipe] = {
    r.name: r
    for r in (
        EncoderRecipe("resnet_c", "classify"),
        EncoderRecipe("s1", "pretrain"),
        EncoderRecipe("s2", "finetune", overrides=(("lambda_s1", 0.0),)),
        EncoderRecipe("s1_s2", "finetune", init="s1"),
    )
}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "ResNet-C",
            "resnet_c",
            "resnet_c",
            describe=lambda cfg: (
                "encoder trained on category labels (cross-entropy); plain CTR model"
            ),
        ),
        Method(
            "S1",
            "s1",
            "s1",
            describe=lambda cfg: (
                f"S1 self-supervised pre-training only ({_s1_objective(cfg)} "
                "on all catalog images); plain CTR model"
            ),
        ),
        Method(
            "S2",
            "s2",
            "s2",
            describe=lambda cfg: (
                "S2 click-contrastive fine-tuning from random init, clicks "
                "only (λ=0); plain CTR model"
            ),
        ),
        Method(
            "S1+S2",
            "s1_s2",
            "s1_s2",
            describe=lambda cfg: (
                f"S1, then S2 with the λ·L_S1 term over the catalog "
                f"(λ={cfg.s2.lambda_s1:g}, {_s1_objective(cfg)}); plain CTR model"
            ),
        ),
        Method(
            "S1+S2+H",
            "s1_s2_h",
            "s1_s2",
            ctr="head",
            describe=lambda cfg: (
                "the S1+S2 encoder; CTR model with the same debias network + gate as "
                "S1+S2+D trained by the click loss alone (no triplet, alignment or "
                "relational term): the capacity control S3's claims are made against"
            ),
        ),
        Method(
            "S1+S2+D",
            "s1_s2_d",
            "s1_s2",
            ctr="debias",
            reference="s1",
            describe=lambda cfg: (
                "the S1+S2 encoder; CTR model with the S3 debias network + "
                f"gate (triplets from S1 neighbours, {cfg.ctr.debias.negatives} negatives, "
                f"λ={cfg.ctr.debias.weight:g}); retrieval through the debias network"
            ),
        ),
        Method(
            "S1+S2+IPS",
            "s1_s2_ips",
            "s1_s2",
            ctr="ips",
            describe=lambda cfg: (
                "the S1+S2 encoder; plain CTR model trained with inverse-propensity weights "
                "(position × item exposure, estimated from the logs, clipped at "
                f"{cfg.ctr.ips.clip:g}, self-normalised): the standard debiasing baseline"
            ),
        ),
    )
}


def encoder_order(methods: dict[str, Method] = METHODS) -> list[EncoderRecipe]:
    """The encoder recipes the methods need, each after the one it is initialised from."""
    needed: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in path:
            raise ValueError(f"encoder recipes form a cycle: {' -> '.join((*path, name))}")
        if name in needed:
            return
        init = ENCODERS[name].init
        if init is not None:
            visit(init, (*path, name))
        needed.append(name)

    for name in ENCODERS:  # table order first, so runs train in a stable order
        if any(name in (m.encoder, m.reference) for m in methods.values()):
            visit(name)
    return [ENCODERS[n] for n in needed]


def descriptions(run_cfg: Any) -> dict[str, str]:
    return {name: m.describe(run_cfg) for name, m in METHODS.items()}
