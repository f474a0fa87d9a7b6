"""World sizes per preset, and the resolved world config (defaults < preset < YAML < flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visctr.config import from_dict, merge, read_yaml, to_dict
from visctr.errors import ConfigError
from visctr.world.simulate import SimConfig

PRESETS: dict[str, dict] = {
    "tiny": {
        "catalog": {"max_items": 600},
        "n_users": 100,
        "n_queries": 2_000,
        "n_random_queries": 400,
        "n_retrieval_queries": 400,
    },
    "small": {
        "catalog": {"max_items": 6_000},
        "n_users": 1_000,
        "n_queries": 30_000,
        "n_random_queries": 20_000,
        "n_retrieval_queries": 2_000,
    },
    "full": {
        "catalog": {"max_items": None},
        "n_users": 10_000,
        "n_queries": 140_000,
        "n_random_queries": 50_000,
        "n_retrieval_queries": 10_000,
    },
}


def resolve_world_config(
    preset: str,
    config_path: Path | None = None,
    catalog: str | None = None,
    data_dir: str | None = None,
) -> SimConfig:
    """Preset sizes, then the YAML ``world`` section, then command-line flags."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} ({', '.join(PRESETS)})")
    data: dict[str, Any] = to_dict(SimConfig())
    data = merge(data, PRESETS[preset])
    if config_path is not None:
        raw = read_yaml(config_path)
        data = merge(data, raw.get("world") or {})
    if catalog is not None:
        data["catalog"]["source"] = catalog
    if data_dir is not None:
        data["catalog"]["data_dir"] = data_dir
    return from_dict(SimConfig, data, "world")
