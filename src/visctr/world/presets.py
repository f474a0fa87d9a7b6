"""The resolved world config: defaults < the preset's world size (:mod:`visctr.presets`) <
the YAML ``world`` section < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visctr.config import from_dict, merge, read_yaml, to_dict
from visctr.presets import preset_section
from visctr.world.simulate import SimConfig


def resolve_world_config(
    preset: str,
    config_path: Path | None = None,
    catalog: str | None = None,
    data_dir: str | None = None,
    *,
    raw: dict | None = None,
) -> SimConfig:
    """Preset sizes, then the YAML ``world`` section, then command-line flags.

    ``raw``: the YAML file's content when the caller has read it already (it is then not
    read again)."""
    data: dict[str, Any] = merge(to_dict(SimConfig()), preset_section(preset, "world"))
    if config_path is not None:
        if raw is None:
            raw = read_yaml(config_path)
        data = merge(data, raw.get("world") or {})
    if catalog is not None:
        data["catalog"]["source"] = catalog
    if data_dir is not None:
        data["catalog"]["data_dir"] = data_dir
    return from_dict(SimConfig, data, "world")
