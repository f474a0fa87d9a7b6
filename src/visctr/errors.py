"""User-facing errors: one clear line naming what and where, no traceback."""

from __future__ import annotations


class VisctrError(Exception):
    """An error caused by input or configuration, reported as one line by the CLI."""


class InputError(VisctrError):
    """Bad input data: missing file, corrupt image, wrong schema, NaN, empty split."""


class ConfigError(VisctrError):
    """Bad configuration: unknown key, wrong type, impossible value."""


class Interrupted(SystemExit):
    """Training stopped by a signal (SIGTERM, Ctrl-C); ``message`` says how to resume.

    A ``SystemExit`` like Lightning's own ``SIGTERMException``, so ``except Exception``
    handlers do not swallow it; its ``code`` is the shell's 128 + signal number.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message
