"""``visctr run``: the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from visctr.cli_common import (
    POSITIVE,
    SEED,
    WORKERS,
    check_out,
    handle_errors,
    path_option,
    preset_option,
    trainer_options,
)

# shared by visctr run and visctr config show, which resolves what run would
# visctr.pipeline.ope.ESTIMATOR_NAMES, spelled out so that --help imports no numpy
OPE_ESTIMATORS = ("ips", "snips", "pi", "dm", "dr", "dr_pi", "dm_log", "dr_log", "dr_pi_log")
PRESET = preset_option("World size and training budget.")
RUN_CONFIG = path_option(
    "--config",
    "config_path",
    help="YAML with sections world, s1, s2, classify, ctr, trainer, abtest, ope.",
)


@click.command("run")
@PRESET
@click.option(
    "--seeds",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="Training seeds per method (claims need >= 3).",
)
@click.option(
    "--seed",
    type=SEED,
    default=0,
    show_default=True,
    help="World seed; training seeds are seed..seed+seeds-1.",
)
@click.option(
    "--ctr-seeds",
    type=click.IntRange(1, 999),
    default=1,
    show_default=True,
    help="CTR models per method and encoder seed; results.json['comparisons'] pairs them "
    "(claims need >= 3).",
)
@click.option(
    "--catalog",
    default=None,
    help="fashion-mnist:train|test (default), an image folder, or a manifest.",
)
@click.option("--data-dir", default=None, help="Folder with the Fashion-MNIST idx files.")
@path_option(
    "--world",
    "world_dir",
    help="An existing world (visctr import or simulate) instead of simulating one.",
)
@WORKERS
@path_option("--out", required=True, help="Run directory.")
@RUN_CONFIG
@click.option("--restart", is_flag=True, help="Recompute every stage (ignore completed ones).")
@trainer_options
@handle_errors
def run(
    preset,
    seeds,
    seed,
    ctr_seeds,
    catalog,
    data_dir,
    world_dir,
    workers,
    out,
    config_path,
    restart,
    trainer_overrides,
):
    """Build (or read) the world, train every method, evaluate, write results.json + report.md.

    With --world, the preset sets only the training budget; the world is read as it is."""
    from visctr.pipeline.run import run as run_api

    run_api(
        preset,
        config=config_path,
        out=out,
        seeds=seeds,
        seed=seed,
        ctr_seeds=ctr_seeds,
        world=world_dir,
        catalog=catalog,
        data_dir=data_dir,
        workers=workers,
        restart=restart,
        trainer=trainer_overrides,
    )


@click.command("abtest")
@path_option("--run", "run_dir", required=True, help="A finished visctr run directory.")
@path_option("--world", "world_dir", help="World directory (default: the run's own world/data).")
@click.option(
    "--queries",
    type=click.IntRange(min=1, max=1_000_000),  # pipeline.config.MAX_AB_QUERIES
    default=None,
    help="Fresh traffic queries, at most 1,000,000 (default: the run config's abtest.queries).",
)
@click.option("--seed", type=SEED, default=None, help="Traffic stream (default: abtest.seed).")
@click.option(
    "--estimator",
    type=click.Choice(OPE_ESTIMATORS),
    default=None,
    help="Estimate each policy's CTR off-policy from the world's logs instead of simulating "
    "traffic (works on imported worlds): ips, snips, pi, dm, dr, dr_pi from the "
    "random-exposure log; dm_log, dr_log, dr_pi_log from the ordinary log (biased unless "
    "its propensities are right). Writes ope.json with every estimator, prints this one.",
)
@handle_errors
def abtest(run_dir, world_dir, queries, seed, estimator):
    """Simulated online A/B test: every method's policy, legacy and oracle on fresh traffic;
    with --estimator, off-policy estimates from the world's logs."""
    from visctr.pipeline.abtest import abtest_run, format_ab_table

    check_out(run_dir, "run", option="--run")  # abtest.json / ope.json is written into it
    if estimator is not None:
        from visctr.pipeline.ope import format_ope_table, format_validation_table, ope_run

        if queries is not None or seed is not None:
            raise click.UsageError("--queries and --seed are for the simulated A/B test")
        res = ope_run(run_dir, world_dir, echo=click.echo)
        click.echo(format_ope_table(res["ope"], estimator))
        if "ope_validation" in res:
            click.echo("against the simulated A/B CTR of this run:")
            click.echo(format_validation_table(res["ope_validation"]))
        if "ope_validation_rpm" in res:
            click.echo("against the simulated A/B RPM of this run:")
            click.echo(format_validation_table(res["ope_validation_rpm"]))
        click.echo(f"written: {Path(run_dir) / 'ope.json'}")
        return
    out = abtest_run(run_dir, world_dir, queries, seed, echo=click.echo)
    click.echo(format_ab_table(out))
    click.echo(f"written: {Path(run_dir) / 'abtest.json'}")


@click.group("config")
def config_group():
    """Inspect the configuration that visctr run resolves."""


@config_group.command("show")
@PRESET
@RUN_CONFIG
@click.option(
    "--section",
    type=click.Choice(["world", "s1", "s2", "classify", "ctr", "abtest"]),
    default=None,
    help="Print one section only (e.g. ctr, which train-ctr --config also takes whole).",
)
@handle_errors
def config_show(preset, config_path, section):
    """Print the resolved run configuration (defaults < preset < --config) as YAML, every
    field spelled out: what visctr run writes to its config.yaml. The output is itself a
    valid --config for visctr run (with the same --preset) and for train-ctr."""
    from visctr.config import RUN_SECTIONS, dump_yaml, to_dict
    from visctr.pipeline.config import resolve_run_config

    data = to_dict(resolve_run_config(preset, config_path))
    keys = RUN_SECTIONS if section is None else (section,)
    src = f" + {config_path}" if config_path is not None else ""
    click.echo(f"# visctr run configuration: preset {preset}{src}")
    click.echo(dump_yaml({k: data[k] for k in keys}), nl=False)


COMMANDS = [run, abtest, config_group]
