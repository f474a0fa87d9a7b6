"""Typed configuration: dataclasses loaded strictly from YAML.

Each stage owns its config dataclass next to its code; this module holds the strict
loader (unknown keys and wrong types are errors, typos are never ignored). A dataclass
that moved keys into a nested section lists the old names in a ``LEGACY_KEYS`` class
variable (``{"old_key": "section.key"}``) so files of the old layout keep loading.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from visctr.errors import ConfigError

T = TypeVar("T")

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxstring = _REPR.maxother = 60


def _v(value: Any, limit: int = 80) -> str:
    """A bounded ``repr`` for messages: a huge value never makes a huge (or slow) error."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: expected {tp}, got {_v(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {list(args)}, got {_v(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_v(value)}")
        inner = args[0] if args else Any
        return type(value)(_check_value(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_v(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {_v(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_v(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_v(value)}")
        try:
            out = float(value)
        except OverflowError:  # an int beyond float range
            out = math.inf
        if not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {_v(value)}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_v(value)}")
        return value
    return value


def _fold_legacy(data: dict, legacy: dict[str, str]) -> dict:
    """Move old flat keys to their nested place; an old key wins over the nested one."""
    out = dict(data)
    for old, new in legacy.items():
        section, key = new.split(".", 1)
        if old in out and isinstance(out.get(section, {}), (dict, type(None))):
            out[section] = {**(out.get(section) or {}), key: out.pop(old)}
    return out


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_v(data)}")
    legacy = getattr(cls, "LEGACY_KEYS", None)
    if legacy:
        data = _fold_legacy(data, legacy)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {_v(unknown[0])} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _check_value(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {_short(str(e))}") from None


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into ``base`` (new dict)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


MAX_YAML_BYTES = 1 << 20  # a config is a few kB; this bounds parse time and memory
MAX_YAML_DEPTH = 64


def _strict_loader():
    """A SafeLoader that refuses anchors/aliases (a few hundred bytes of aliases expand
    to gigabytes: the "billion laughs") and nesting deeper than ``MAX_YAML_DEPTH`` (the
    composer recurses per level: 20,000 levels would raise RecursionError)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                raise ConfigError(
                    f"line {mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                    "supported in visctr configs; write the values out"
                )
            self._depth += 1
            try:
                if self._depth > MAX_YAML_DEPTH:
                    mark = event.start_mark
                    raise ConfigError(
                        f"line {mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels"
                    )
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return StrictLoader


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping: UTF-8, at most 1 MiB, no aliases, bounded depth."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB; not a visctr config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text; save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({_short(str(e))})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


# The top-level keys of a ``visctr run`` config (``--config`` sections) and of the
# resolved ``config.yaml`` a run writes (which adds preset, seeds and seed).
RUN_SECTIONS = ("world", "s1", "s2", "classify", "ctr", "trainer", "examples", "abtest", "ope")
RUN_KEYS = (*RUN_SECTIONS, "preset", "seeds", "seed")


def stage_section(data: dict, section: str, path: str | Path) -> dict:
    """A stage's own config from ``data``: ``data`` itself, or, when it is a run config
    (it has the ``section`` key), that section with the run's ``trainer`` overrides applied
    as ``visctr run`` applies them. Other run keys are ignored; unknown ones are errors."""
    if section not in data:
        return data
    unknown = sorted(str(k) for k in set(data) - set(RUN_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: a run config with a {section!r} section, but unknown key {unknown[0]!r} "
            f"(a run config has {', '.join(RUN_SECTIONS)})"
        )
    own = data[section] or {}
    if not isinstance(own, dict):
        raise ConfigError(f"{path}: section {section!r} must be a mapping")
    trainer = data.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise ConfigError(f"{path}: section 'trainer' must be a mapping")
    return merge(own, {"trainer": trainer}) if trainer else own


def dump_yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def config_hash(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True).encode()).hexdigest()[:16]
