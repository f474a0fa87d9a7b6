"""User-facing errors: one clear line naming what and where, no traceback."""

from __future__ import annotations


class VisctrError(Exception):
    """An error caused by input or configuration, reported as one line by the CLI."""


class InputError(VisctrError):
    """Bad input data: missing file, corrupt image, wrong schema, NaN, empty split."""


class ConfigError(VisctrError):
    """Bad configuration: unknown key, wrong type, impossible value."""
