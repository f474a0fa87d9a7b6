"""The run configuration: one YAML, one section per step, presets for sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visctr.config import from_dict, merge, read_yaml, to_dict
from visctr.world.simulate import PRESETS, SimConfig


def resolve_world_config(
    preset: str,
    config_path: Path | None = None,
    catalog: str | None = None,
    data_dir: str | None = None,
) -> SimConfig:
    """Preset sizes, then the YAML ``world`` section, then command-line flags."""
    data: dict[str, Any] = to_dict(SimConfig())
    data = merge(data, PRESETS[preset])
    if config_path is not None:
        raw = read_yaml(config_path)
        data = merge(data, raw.get("world") or {})
    if catalog is not None:
        data["catalog"]["source"] = catalog
        if preset == "full" or not catalog.startswith("fashion-mnist"):
            data["catalog"]["max_items"] = (
                PRESETS[preset]["catalog"]["max_items"]
                if catalog.startswith("fashion-mnist")
                else data["catalog"].get("max_items")
            )
    if data_dir is not None:
        data["catalog"]["data_dir"] = data_dir
    return from_dict(SimConfig, data, "world")
