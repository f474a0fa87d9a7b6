"""``visctr simulate``."""

from __future__ import annotations

from pathlib import Path

import click

from visctr.cli_common import SEED, check_out, handle_errors, path_input


@click.command()
@click.option(
    "--preset",
    type=click.Choice(["tiny", "small", "full"]),
    default="small",
    show_default=True,
    help="World size: tiny (~600 items, tests), small (~6k), full.",
)
@click.option(
    "--catalog",
    default=None,
    help="fashion-mnist:train|test, an image folder, or a .parquet/.csv manifest.",
)
@click.option("--data-dir", default=None, help="Folder with the Fashion-MNIST idx files.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="World directory.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML run config; its 'world' section sets any simulator knob.",
)
@handle_errors
def simulate(
    preset: str,
    catalog: str | None,
    data_dir: str | None,
    seed: int,
    out: Path,
    config_path: Path | None,
) -> None:
    """Build the visual-search world: catalog, users, query photos, biased logs, eval sets."""
    from visctr.world.presets import resolve_world_config
    from visctr.world.simulate import format_summary
    from visctr.world.simulate import simulate as run_sim

    check_out(out, "world", path_input(catalog), data_dir, config_path)
    cfg = resolve_world_config(preset, config_path, catalog=catalog, data_dir=data_dir)
    summary = run_sim(cfg, seed, out)
    click.echo(format_summary(summary))
    click.echo(f"world written to {out} in {summary['seconds']:.1f}s")
