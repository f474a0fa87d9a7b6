"""The presets, in one table: for each of ``tiny``, ``small`` and ``full``, the world's size
and every stage's budget. ``visctr run``, ``visctr simulate``, the stage verbs, their
``--preset`` choices and every message about presets read this table, so a stage verb
trains the stage that ``visctr run`` with the same preset trains.

A preset's section is merged over the section's defaults (the config dataclasses), then the
YAML file's section and the command-line flags are merged over it.
"""

from __future__ import annotations

import copy
from typing import Any

from visctr.errors import ConfigError

# Every preset runs S1 (and the λ·L_S1 term of S2) with InfoNCE rather than the library
# default SimSiam, which had barely started within the CPU budget of `small`
# (docs/results.md, "Tuning").
_S1_INFONCE = {"s1": {"objective": {"method": "infonce"}}, "s2": {"s1": {"method": "infonce"}}}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {  # seconds per stage: for tests and smoke runs, not for conclusions
        "world": {
            "catalog": {"max_items": 600},
            "n_users": 100,
            "n_queries": 2_000,
            "n_random_queries": 400,
            "n_retrieval_queries": 400,
        },
        "s1": {**_S1_INFONCE["s1"], "epochs": 1, "batch_size": 128, "probe_items": 200},
        "s2": {**_S1_INFONCE["s2"], "epochs": 1, "batch_size": 128, "probe_items": 200},
        "classify": {"epochs": 1, "batch_size": 128, "probe_items": 200},
        "ctr": {"max_epochs": 1},
        "abtest": {"queries": 500},
        "ope": {"bootstrap": 200},
    },
    "small": {
        "world": {
            "catalog": {"max_items": 6_000},
            "n_users": 1_000,
            "n_queries": 30_000,
            "n_random_queries": 20_000,
            "n_retrieval_queries": 2_000,
            # 20,000 uniform retrieval queries in all, on a stream of their own (the world's
            # clicks stay those of the committed runs): a selection-bias CI of about ±0.02
            "extra_retrieval_queries": 18_000,
        },
        **_S1_INFONCE,
    },
    "full": {
        "world": {
            "catalog": {"max_items": None},
            "n_users": 10_000,
            "n_queries": 140_000,
            "n_random_queries": 50_000,
            "n_retrieval_queries": 10_000,
            "extra_retrieval_queries": 10_000,  # 20,000 in all, as `small`
        },
        "s1": _S1_INFONCE["s1"],
        # S2's λ·L_S1 loader cycles the catalog beside the click pairs (an epoch is the
        # longer of the two); 128 keeps `small`'s proportion of catalog to click steps.
        "s2": {**_S1_INFONCE["s2"], "s1_batch_size": 128},
    },
}

PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
DEFAULT_PRESET = "small"


def check_preset(name: str) -> str:
    """``name`` if it is a preset, else a :class:`ConfigError` listing the presets."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} ({', '.join(PRESET_NAMES)})")
    return name


def preset_section(name: str, section: str) -> dict[str, Any]:
    """A copy of preset ``name``'s ``section`` (``world``, ``s1``, ``s2``, ``classify``,
    ``ctr``, ``abtest``, ``ope``); empty where the preset keeps the defaults."""
    return copy.deepcopy(PRESETS[check_preset(name)].get(section, {}))
