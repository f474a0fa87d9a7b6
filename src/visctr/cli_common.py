"""Pieces shared by every CLI verb: error reporting, option types, the accelerator options
and the ``--out`` checks.

Every verb reports a failure as one line on stderr (the traceback only with ``visctr
--debug``): input and configuration errors (:class:`VisctrError`, exit 2), a file system
error (OSError: permission, read-only, disk full; exit 2) naming the path, a stop by
signal during training (exit 143 / 130) saying how to resume, SIGTERM outside training
(exit 143) saying that nothing partial was written, and anything else as an internal
error (exit 1). Ctrl-C outside training exits 130 with one line; SystemExit passes through.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from visctr.errors import Interrupted, VisctrError

_OS_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EACCES: "check its permissions or write elsewhere",
    errno.EPERM: "check its permissions or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
}


def os_error_line(e: OSError) -> str:
    """One line for an OSError: the path, what the system said, what to do."""
    where = e.filename if e.filename is not None else None
    what = e.strerror or str(e) or type(e).__name__
    line = f"{where}: {what}" if where is not None else what
    if e.filename2 is not None:
        line += f" (-> {e.filename2})"
    hint = _OS_HINTS.get(e.errno or -1)
    return f"{line}; {hint}" if hint else line


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _stop_on_sigterm(verb: str) -> Callable[[int, Any], None]:
    """A SIGTERM handler for work outside training: stop with :class:`Interrupted` (143).

    Raised in the main thread, the exception unwinds through the atomic writers of
    :mod:`visctr.io`, which remove their temporary files, so nothing partial is left.
    During training Lightning installs its own handler and calls this one too: then it
    does nothing, and Lightning stops at the next batch and saves a checkpoint.
    """

    def handler(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is not handler:
            return  # called by Lightning's handler during training, which takes care of it
        raise Interrupted(
            f"stopped by SIGTERM during {verb}; nothing partial was written: rerun the "
            "same command to do it again",
            128 + signal.SIGTERM,
        )

    return handler


@contextlib.contextmanager
def _sigterm_stops(verb: str) -> Iterator[None]:
    """Within the block, SIGTERM ends the verb with one line and exit 143 (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _stop_on_sigterm(verb))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report failures as one line (traceback only with ``--debug``); see the module doc."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context(silent=True)
        debug = bool(ctx and ctx.find_root().params.get("debug"))
        verb = f"'visctr {ctx.info_name}'" if ctx and ctx.info_name else "visctr"
        try:
            with _sigterm_stops(verb):
                return fn(*args, **kwargs)
        except Interrupted as e:
            if e.message:
                click.echo(f"visctr: {_one_line(e.message)}", err=True)
            sys.exit(e.code)
        except KeyboardInterrupt:  # Ctrl-C outside training (training raises Interrupted)
            click.echo(
                f"visctr: interrupted (Ctrl-C) during {verb}; nothing partial was written: "
                "rerun the same command to do it again",
                err=True,
            )
            sys.exit(128 + signal.SIGINT)
        except VisctrError as e:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {_one_line(e)}", err=True)
            sys.exit(2)
        except OSError as e:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {_one_line(os_error_line(e))}", err=True)
            sys.exit(2)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception as e:  # the last resort: one line, never a traceback by default
            if debug:
                traceback.print_exc()
            msg = _one_line(f"{type(e).__name__}: {e}", 300)
            click.echo(
                f"error: internal error ({msg}); rerun with --debug for the traceback", err=True
            )
            sys.exit(1)

    return wrapper


# ---- option types --------------------------------------------------------------------------

SEED = click.IntRange(0, 2**32 - 1)  # numpy and Lightning seeds are unsigned 32-bit
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$")


def check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--device``: auto | cpu | cuda | cuda:N | mps."""
    if value is not None and not _DEVICE_RE.match(value):
        raise click.BadParameter(f"{value[:40]!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


def _check_devices(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    from visctr.train import check_devices

    try:
        return check_devices(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _check_strategy(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None or value == "auto":
        return value
    from lightning.pytorch.strategies import StrategyRegistry

    known = StrategyRegistry.available_strategies()
    if value not in known:
        raise click.BadParameter(
            f"{value[:40]!r}: use auto or one of Lightning's strategies (ddp, ddp_spawn, fsdp, "
            "deepspeed, ...)"
        )
    return value


def _check_logger(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is not None:
        from visctr.errors import ConfigError
        from visctr.train import check_logger

        try:
            check_logger(value)
        except ConfigError as e:
            raise click.BadParameter(str(e)) from None
    return value


PATH = click.Path(path_type=Path)


def path_option(*decls: str, required: bool = False, help: str | None = None):
    """A file or directory option (a :class:`~pathlib.Path`; ``None`` when not given), the
    one way every verb declares one. ``decls``: the option's names, as for click.option
    (``"--world", "world_dir"`` names its parameter ``world_dir``)."""
    return click.option(*decls, type=PATH, required=required, default=None, help=help)


def preset_option(help: str):
    """``--preset``: a name of the one preset table (:mod:`visctr.presets`), default
    ``small``."""
    from visctr.presets import DEFAULT_PRESET, PRESET_NAMES

    return click.option(
        "--preset",
        type=click.Choice(PRESET_NAMES),
        default=DEFAULT_PRESET,
        show_default=True,
        help=help,
    )


WORKERS = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes decoding the photos (default: every core; catalogs under 2,000 images "
    "are decoded in-process).",
)


def trainer_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--accelerator --devices --num-nodes --strategy --precision --logger`` →
    ``trainer_overrides``."""
    from visctr.train import ACCELERATORS, LOGGERS, PRECISIONS

    @click.option(
        "--accelerator",
        type=click.Choice(ACCELERATORS),
        default=None,
        help="cpu | gpu | auto (default: auto).",
    )
    @click.option(
        "--devices",
        default=None,
        callback=_check_devices,
        help="Devices per node: an integer, -1 (all), 'auto' or ids like '0,1'.",
    )
    @click.option("--num-nodes", type=POSITIVE, default=None, help="Nodes for multi-node DDP.")
    @click.option(
        "--strategy", default=None, callback=_check_strategy, help="Lightning strategy: auto | ddp."
    )
    @click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=None,
        help="auto (encoder stages: bf16-mixed on a bf16 GPU, 16-mixed on other GPUs, fp32 "
        "on CPU; CTR: fp32) | 32 | bf16-mixed | 16-mixed.",
    )
    @click.option(
        "--logger",
        type=click.Choice(LOGGERS),
        default=None,
        callback=_check_logger,
        help="Lightning logger writing OUT/logs/version_N/: csv | tensorboard (needs the "
        "tensorboard package) | none (default).",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any, accelerator, devices, num_nodes, strategy, precision, logger, **kwargs: Any
    ):
        over: dict[str, Any] = {}
        if logger is not None:
            over["logger"] = logger
        if accelerator is not None:
            over["accelerator"] = accelerator
        if devices is not None:
            over["devices"] = devices
        if num_nodes is not None:
            over["num_nodes"] = num_nodes
        if strategy is not None:
            over["strategy"] = strategy
        if precision is not None:
            over["precision"] = precision
        return fn(*args, trainer_overrides=over, **kwargs)

    return wrapper


# ---- --out ---------------------------------------------------------------------------------


def check_out(
    out: Path, kind: str, *inputs: str | os.PathLike | None, option: str = "--out"
) -> None:
    """The one ``--out`` check of every verb (see :func:`visctr.io.check_out_dir`): refuse a
    file, a non-empty directory visctr did not write as a ``kind`` directory, and a path
    that is, contains or is inside one of ``inputs``. Writes nothing."""
    from visctr.io import check_out_dir, check_out_file

    if kind == "file":
        check_out_file(out, inputs, option)
    else:
        check_out_dir(out, kind, inputs, option)


def path_input(value: str | None) -> Path | None:
    """A ``--catalog``-like value that names a path (not ``fashion-mnist:SPLIT``)."""
    if value is None or value.startswith("fashion-mnist"):
        return None
    return Path(value)
