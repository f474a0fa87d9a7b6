"""The run configuration: one YAML, one section per step, presets for sizes.

Sections: ``world`` (simulator), ``s1`` (pre-training), ``s2`` (click fine-tuning),
``classify`` (ResNet-C), ``ctr`` (CTR model + S3 debias), ``trainer`` (hardware,
applied to every training stage). Order of precedence: defaults < preset < YAML <
command-line flags. The resolved config is written to every run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visctr.config import RUN_SECTIONS, from_dict, merge, read_yaml
from visctr.ctr.config import CTRConfig
from visctr.encoders.config import ClassifyConfig, S1Config, S2Config
from visctr.errors import ConfigError
from visctr.presets import check_preset, preset_section
from visctr.train import TrainerConfig, check_logger
from visctr.world.presets import resolve_world_config
from visctr.world.simulate import SimConfig

RANK_BY = ("ctr", "ecpm")  # what abtest.rank_by may be

# A/B traffic per run. Its photos are taken on demand (eval.abtest.TrafficPhotos), but each
# policy's shown items, each encoder's query vectors and the per-query clicks the paired
# bootstrap resamples are held: about 1 KB a query for the seven methods
MAX_AB_QUERIES = 1_000_000


@dataclass
class ABTestConfig:
    """The simulated online A/B test of every method's policy (``visctr.eval.abtest``)."""

    queries: int = 5_000  # fresh traffic queries (0: no A/B test)
    candidates: int = 50  # retrieved per query from the whole catalog, then re-ranked
    top_k: int | None = None  # shown per query (None: the world's logging top_k)
    seed: int = 0  # traffic stream (the same traffic for every training seed)
    # ranking key: ctr (pCTR alone) or ecpm (pCTR × the item's cost-per-click bid; the
    # world needs bids). Revenue (RPM) is reported either way when the world has bids.
    rank_by: str = "ctr"  # one of RANK_BY

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ValueError(f"rank_by must be ctr or ecpm, got {self.rank_by!r}")
        if not 0 <= self.queries <= MAX_AB_QUERIES:
            raise ValueError(
                f"queries must be in 0..{MAX_AB_QUERIES:,} (each policy's per-query figures "
                f"are held in memory; for more, run several traffic seeds), got {self.queries}"
            )
        if not 1 <= self.candidates <= 10_000:
            raise ValueError(f"candidates must be in 1..10000, got {self.candidates}")
        if self.top_k is not None and not 1 <= self.top_k <= self.candidates:
            raise ValueError(f"top_k must be in 1..candidates, got {self.top_k}")


@dataclass
class OPEConfig:
    """Off-policy estimates from the random-exposure bucket and the ordinary log
    (``visctr.eval.ope``)."""

    enabled: bool = True
    reward_model: str = "S1+S2"  # the method whose CTR model is dm's / dr's reward model
    bootstrap: int = 1000  # resamples of the bucket's queries for every CI
    seed: int = 0  # the bootstrap's random stream
    max_queries: int | None = None  # bucket queries used (None: all of them)
    examination: str = "power"  # θ by position: power (1+k)^-η, or free (per-position ratio)
    # the ordinary log's propensity when its file records none: deterministic (1 per logged
    # slot: the ranker showed that slate for sure) or exposure (share of queries showing
    # the item x share of impressions at the position, the S1+S2+IPS estimate)
    log_propensity: str = "deterministic"

    def __post_init__(self) -> None:
        from visctr.pipeline.methods import METHODS

        if self.log_propensity not in ("deterministic", "exposure"):
            raise ValueError(
                f"log_propensity must be deterministic or exposure, got {self.log_propensity!r}"
            )
        if self.examination not in ("power", "free"):
            raise ValueError(f"examination must be power or free, got {self.examination!r}")
        if self.reward_model not in METHODS:
            raise ValueError(
                f"reward_model must be one of {', '.join(METHODS)}, got {self.reward_model!r}"
            )
        if self.bootstrap < 10:
            raise ValueError(f"bootstrap must be >= 10, got {self.bootstrap}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")


MAX_CTR_SEEDS = 999  # CTR seed c trains with seed + 1000·c: below the next encoder's 1000s


@dataclass
class RunConfig:
    """Everything ``visctr run`` does, resolved."""

    preset: str = "small"
    seeds: int = 1
    seed: int = 0  # world seed; training seeds are seed, seed+1, ...
    ctr_seeds: int = 1  # CTR models per method and encoder seed (paired comparisons)
    world: SimConfig = field(default_factory=SimConfig)
    s1: S1Config = field(default_factory=S1Config)
    s2: S2Config = field(default_factory=S2Config)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    ctr: CTRConfig = field(default_factory=CTRConfig)
    trainer: dict = field(default_factory=dict)  # overrides applied to every stage
    examples: int = 6  # query photos in the report's retrieval grid
    abtest: ABTestConfig = field(default_factory=ABTestConfig)
    ope: OPEConfig = field(default_factory=OPEConfig)


def resolve_run_config(
    preset: str,
    config_path: Path | None = None,
    *,
    seeds: int = 1,
    seed: int = 0,
    ctr_seeds: int = 1,
    catalog: str | None = None,
    data_dir: str | None = None,
    trainer_overrides: dict | None = None,
):
    """Resolve the full run config (defaults < preset < YAML < flags)."""
    check_preset(preset)
    raw = read_yaml(config_path) if config_path is not None else {}
    known = set(RUN_SECTIONS)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown section {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    world = resolve_world_config(preset, config_path, catalog, data_dir, raw=raw)
    data: dict[str, Any] = {}
    for name in ("s1", "s2", "classify", "ctr"):
        section = merge(preset_section(preset, name), raw.get(name) or {})
        data[name] = section
    trainer = merge(raw.get("trainer") or {}, trainer_overrides or {})
    tcfg = from_dict(TrainerConfig, trainer, "trainer")  # validate keys/types early
    check_logger(tcfg.logger)  # before any stage writes anything
    if str(tcfg.devices) != "1" or tcfg.num_nodes != 1:
        # Lightning's DDP launcher re-runs the whole command once per rank; the run's
        # non-training steps (simulate, embed, evaluate, report) are single-process.
        raise ConfigError(
            f"visctr run trains on one device (got devices={tcfg.devices}, num_nodes="
            f"{tcfg.num_nodes}); for DDP run the stage verbs (pretrain, finetune, classify, "
            "train-ctr) with --devices/--num-nodes, see docs/scaling.md"
        )
    for name in ("s1", "s2", "classify", "ctr"):
        data[name] = merge(data[name], {"trainer": trainer}) if trainer else data[name]
    data.update(preset=preset, seeds=seeds, seed=seed, ctr_seeds=ctr_seeds, trainer=trainer)
    if "examples" in raw:
        data["examples"] = raw["examples"]
    for name in ("abtest", "ope"):
        data[name] = merge(preset_section(preset, name), raw.get(name) or {})
    cfg = from_dict(RunConfig, data, "config")
    cfg.world = world
    # the S1 objectives are checked where they are built; a run checks them before any work
    from visctr.encoders.objectives import objective_class

    objective_class(cfg.s1.objective.method, "s1.objective.method")
    objective_class(cfg.s2.s1.method, "s2.s1.method")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if not 1 <= ctr_seeds <= MAX_CTR_SEEDS:
        raise ConfigError(f"--ctr-seeds must be in 1..{MAX_CTR_SEEDS}, got {ctr_seeds}")
    return cfg
