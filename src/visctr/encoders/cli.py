"""CLI verbs of the encoder stages: ``pretrain``, ``finetune``, ``classify``, ``embed``.

A stage's config is resolved as ``visctr run`` resolves it: the defaults, then the stage's
section of ``--preset`` (:mod:`visctr.presets`; ``small`` by default, as for ``run``), then
``--config FILE.yaml``'s section named after the verb (``pretrain:``, ``finetune:``,
``classify:``) or the same stage's section of a ``visctr run`` config (``s1:``, ``s2:``),
read strictly (unknown keys are errors), with a top-level ``trainer:`` mapping; then
``--epochs`` and the accelerator flags. So ``visctr pretrain`` alone trains the S1 that
``visctr run`` trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from visctr.cli_common import (
    POSITIVE,
    SEED,
    check_device,
    check_out,
    handle_errors,
    path_option,
    preset_option,
    trainer_options,
)
from visctr.config import from_dict, merge, read_yaml
from visctr.errors import ConfigError
from visctr.presets import DEFAULT_PRESET, preset_section

# A verb reads its own section, or the one of the same stage in a `visctr run` config.
SECTIONS = {
    "pretrain": ("pretrain", "s1"),
    "finetune": ("finetune", "s2"),
    "classify": ("classify",),
}
# The section of the run config (and of the presets) that a verb's stage is.
RUN_SECTION = {"pretrain": "s1", "finetune": "s2", "classify": "classify"}


def _load_cfg(
    cls: type,
    verb: str,
    config: Path | None,
    epochs: int | None,
    trainer_overrides: dict[str, Any],
    preset: str = DEFAULT_PRESET,
) -> Any:
    """Stage config = defaults < the preset's section < the file's section < its top-level
    ``trainer`` < flags: what ``visctr run --preset PRESET --config FILE`` trains."""
    data: dict[str, Any] = preset_section(preset, RUN_SECTION[verb])
    where = f"{verb} config"
    if config is not None:
        raw = read_yaml(config)
        found = [name for name in SECTIONS[verb] if name in raw]
        if not found:
            raise ConfigError(
                f"{config}: no {' or '.join(map(repr, SECTIONS[verb]))} section (top-level "
                f"keys: {', '.join(sorted(raw)) or 'none'})"
            )
        if len(found) > 1:
            raise ConfigError(f"{config}: both {found[0]!r} and {found[1]!r} sections; keep one")
        where = f"{config}:{found[0]}"
        section = raw[found[0]] or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: must be a mapping")
        if raw.get("trainer"):
            section = merge(section, {"trainer": raw["trainer"]})
        from_dict(cls, section, where=where)  # report file errors against the file
        data = merge(data, section)
    over: dict[str, Any] = {}
    if epochs is not None:
        over["epochs"] = epochs
    if trainer_overrides:
        over["trainer"] = trainer_overrides
    cfg = from_dict(cls, merge(data, over), where=f"{where} + command line")
    from visctr.train import check_logger

    check_logger(cfg.trainer.logger)  # before anything is written
    return cfg


def _echo(path: Path) -> None:
    """Print the artifact's path once (rank 0 under DDP)."""
    from visctr.train import is_global_zero

    if is_global_zero():
        click.echo(path)


def _world(path: Path):
    from visctr.world.store import World

    return World.load(path)


def _say_objective(verb: str, cfg: Any, preset: str) -> None:
    """Name the S1 objective a verb trains with (the library default differs from the
    presets': SimSiam against InfoNCE), on stderr, once."""
    from visctr.train import is_global_zero

    objective = getattr(cfg, "objective", None) or (
        cfg.s1 if getattr(cfg, "lambda_s1", 0) > 0 else None
    )
    if objective is not None and is_global_zero():
        term = "S1 objective" if verb == "pretrain" else "λ·L_S1 objective"
        click.echo(f"[{verb}] {term}: {objective.method} (preset {preset})", err=True)


def _stage_options(fn):
    fn = click.option(
        "--epochs", type=POSITIVE, default=None, help="Override the config's epochs."
    )(fn)
    fn = preset_option(
        "The stage budget and S1 objective of 'visctr run --preset' (the config "
        "file and flags override it)."
    )(fn)
    fn = path_option(
        "--config",
        "config",
        help="YAML file: its section named after this verb (or s1/s2 as in a 'visctr run' config) is the stage config.",
    )(fn)
    fn = click.option("--seed", type=SEED, default=0, show_default=True)(fn)
    fn = path_option(
        "--out",
        "out",
        required=True,
        help="Output directory (encoder.pt, history.json, checkpoints/).",
    )(fn)
    fn = path_option(
        "--world", "world", required=True, help="World directory written by 'visctr simulate'."
    )(fn)
    return fn


def _catalog_verb(verb: str, cfg_name: str, stage_name: str, doc: str) -> click.Command:
    """A verb for a stage trained on the catalog images alone (S1, ResNet-C)."""

    @click.command(name=verb, help=doc)
    @_stage_options
    @trainer_options
    @handle_errors
    def command(
        world: Path,
        out: Path,
        seed: int,
        config: Path | None,
        epochs: int | None,
        preset: str,
        trainer_overrides: dict[str, Any],
    ) -> None:
        from visctr.encoders import config as configs
        from visctr.encoders import stages

        check_out(out, "encoder", world, config)
        cls = getattr(configs, cfg_name)
        cfg = _load_cfg(cls, verb, config, epochs, trainer_overrides, preset)
        _say_objective(verb, cfg, preset)
        _echo(getattr(stages, stage_name)(_world(world), cfg, out, seed))

    return command


pretrain = _catalog_verb(
    "pretrain",
    "S1Config",
    "pretrain",
    "S1: self-supervised pre-training on every catalog image. The config's objective.method "
    "picks the S1 objective (every preset: infonce, as in 'visctr run'; the library default "
    "without a preset is simsiam; an unknown name lists the registered ones).",
)
classify = _catalog_verb(
    "classify", "ClassifyConfig", "classify", "ResNet-C: the category-supervised baseline encoder."
)


@click.command()
@_stage_options
@path_option("--init", help="S1 encoder.pt to start from (default: random init).")
@trainer_options
@handle_errors
def finetune(
    world: Path,
    out: Path,
    seed: int,
    config: Path | None,
    epochs: int | None,
    preset: str,
    init: Path | None,
    trainer_overrides: dict[str, Any],
) -> None:
    """S2: click-supervised contrastive fine-tuning (+ lambda_s1 x the S1 loss)."""
    from visctr.encoders.config import S2Config
    from visctr.encoders.stages import finetune as run

    check_out(out, "encoder", world, config, init)
    cfg = _load_cfg(S2Config, "finetune", config, epochs, trainer_overrides, preset)
    _say_objective("finetune", cfg, preset)
    _echo(run(_world(world), cfg, out, seed, init=init))


@click.command()
@path_option(
    "--world", "world", required=True, help="World directory written by 'visctr simulate'."
)
@path_option(
    "--encoder",
    "encoder",
    required=True,
    help="encoder.pt written by pretrain, finetune or classify.",
)
@path_option(
    "--out", "out", required=True, help="Output directory for items.parquet and queries.parquet."
)
@click.option("--batch-size", type=POSITIVE, default=1024, show_default=True)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=check_device,
    help="auto | cpu | cuda | cuda:N | mps",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "32", "32-true", "bf16-mixed"]),
    default="auto",
    show_default=True,
    help="auto and 32: fp32 (the vectors equal the exported encoder's); bf16-mixed: bf16 "
    "autocast, faster on some GPUs, vectors move by ~3e-3 (recorded in the files).",
)
@handle_errors
def embed(
    world: Path, encoder: Path, out: Path, batch_size: int, device: str, precision: str
) -> None:
    """Embed every catalog item and query photo (L2-normalised) to Parquet."""
    from visctr.encoders.export import embed as run

    check_out(out, "embeddings", world, encoder)
    items, queries = run(
        encoder, _world(world), out, batch_size=batch_size, device=device, precision=precision
    )
    click.echo(items)
    click.echo(queries)


COMMANDS = [pretrain, finetune, classify, embed]
