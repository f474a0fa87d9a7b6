"""``visctr simulate``."""

from __future__ import annotations

from pathlib import Path

import click

from visctr.cli_common import (
    SEED,
    WORKERS,
    check_out,
    handle_errors,
    path_input,
    path_option,
    preset_option,
)


@click.command()
@preset_option("World size: tiny (~600 items, tests), small (~6k), full.")
@click.option(
    "--catalog",
    default=None,
    help="fashion-mnist:train|test, an image folder, or a .parquet/.csv manifest.",
)
@click.option("--data-dir", default=None, help="Folder with the Fashion-MNIST idx files.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@path_option("--out", required=True, help="World directory.")
@path_option(
    "--config", "config_path", help="YAML run config; its 'world' section sets any simulator knob."
)
@WORKERS
@handle_errors
def simulate(
    preset: str,
    catalog: str | None,
    data_dir: str | None,
    seed: int,
    out: Path,
    config_path: Path | None,
    workers: int | None,
) -> None:
    """Build the visual-search world: catalog, users, query photos, biased logs, eval sets."""
    from visctr.world.presets import resolve_world_config
    from visctr.world.simulate import format_summary
    from visctr.world.simulate import simulate as run_sim

    check_out(out, "world", path_input(catalog), data_dir, config_path)
    cfg = resolve_world_config(preset, config_path, catalog=catalog, data_dir=data_dir)
    summary = run_sim(cfg, seed, out, workers=workers)
    click.echo(format_summary(summary))
    click.echo(f"world written to {out} in {summary['seconds']:.1f}s")


def _timestamp(value: str | None, unit: str = "auto") -> int | None:
    """``--split-time``: epoch integers (unit as for the files) or ISO-8601 (no zone = UTC)."""
    if value is None:
        return None
    import pyarrow as pa

    from visctr.world.importer import parse_timestamps

    return int(parse_timestamps(pa.array([value]), Path("--split-time"), "value", unit=unit)[0])


@click.command("import")
@path_option(
    "--catalog", required=True, help="Manifest (.csv/.parquet): item_id, image_path, category."
)
@path_option(
    "--queries",
    required=True,
    help="Queries (.csv/.parquet): query_id, image_path, user_id, timestamp.",
)
@path_option(
    "--impressions",
    required=True,
    help="Impression log: query_id, item_id, position, clicked [, timestamp] [, propensity].",
)
@path_option(
    "--random",
    "random_log",
    help="Random-exposure log (same schema), if the shop runs a random bucket.",
)
@path_option("--retrieval", help="Labelled retrieval photos: query_id, image_path, item_id.")
@click.option(
    "--train-share",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.8,
    show_default=True,
    help="Share of logged queries (earliest first) in the train split.",
)
@click.option(
    "--split-time",
    default=None,
    help="Instead of --train-share: queries before this time (seconds or ISO-8601) are train.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=8, max=1024),
    default=28,
    show_default=True,
    help="Pixels a side of the stored photos (8..1024).",
)
@click.option("--channels", type=click.Choice(["1", "3"]), default="1", show_default=True)
@click.option(
    "--timestamp-unit",
    type=click.Choice(["auto", "s", "ms", "us", "ns"]),
    default="auto",
    show_default=True,
    help="Unit of integer timestamps; auto reads it from their magnitude.",
)
@click.option(
    "--dedupe",
    is_flag=True,
    help="Drop exact duplicate impression rows (same query, item, position, click) instead "
    "of refusing them.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Dry run: read and validate every file as the import does, print what was found, "
    "write nothing (--out is not needed).",
)
@WORKERS
@path_option("--out", help="World directory.")
@handle_errors
def import_(
    catalog: Path,
    queries: Path,
    impressions: Path,
    random_log: Path | None,
    retrieval: Path | None,
    train_share: float,
    split_time: str | None,
    image_size: int,
    channels: str,
    timestamp_unit: str,
    dedupe: bool,
    check: bool,
    workers: int | None,
    out: Path | None,
) -> None:
    """Build a world from a shop's own catalog, queries and impression logs. Photos are
    decoded in chunks by a pool of processes straight into the world's image store, so
    memory stays flat in the number of photos."""
    from visctr.errors import InputError
    from visctr.world.importer import ImportConfig, format_check, import_world
    from visctr.world.simulate import format_summary

    inputs = [catalog, queries, impressions, random_log, retrieval]
    if not check:
        if out is None:
            raise click.UsageError("Missing option '--out' (or give --check for a dry run).")
        check_out(out, "world", *inputs)
    cfg = ImportConfig(
        image_size=image_size,
        channels=int(channels),
        train_share=train_share,
        split_time=_timestamp(split_time, timestamp_unit),
        workers=workers,
        timestamp_unit=timestamp_unit,
        dedupe=dedupe,
    )
    summary = import_world(
        catalog, queries, impressions, out, random_log, retrieval, cfg, echo=click.echo,
        check=check,
    )  # fmt: skip
    if check:
        report = summary["check"]
        click.echo(format_check(report))
        if report["problems"]:
            raise InputError(report["problems"][0])
        return
    click.echo(format_summary(summary))
    click.echo(f"world written to {out} in {summary['seconds']:.1f}s")
