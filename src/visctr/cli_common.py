"""Pieces shared by every CLI verb: error reporting and the accelerator options."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from visctr.errors import VisctrError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report :class:`VisctrError` as one line (traceback only with ``--debug``), exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except VisctrError as e:
            ctx = click.get_current_context(silent=True)
            debug = bool(ctx and ctx.find_root().params.get("debug"))
            if debug:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(2)

    return wrapper


def trainer_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--accelerator --devices --num-nodes --strategy --precision`` → ``trainer_overrides``."""

    @click.option("--accelerator", default=None, help="cpu | gpu | auto (default: auto).")
    @click.option("--devices", default=None, help="Devices per node: an integer or 'auto'.")
    @click.option("--num-nodes", type=int, default=None, help="Nodes for multi-node DDP.")
    @click.option("--strategy", default=None, help="Lightning strategy: auto | ddp | ...")
    @click.option("--precision", default=None, help="32-true | bf16-mixed | 16-mixed.")
    @functools.wraps(fn)
    def wrapper(*args: Any, accelerator, devices, num_nodes, strategy, precision, **kwargs: Any):
        over: dict[str, Any] = {}
        if accelerator is not None:
            over["accelerator"] = accelerator
        if devices is not None:
            over["devices"] = int(devices) if str(devices).isdigit() else devices
        if num_nodes is not None:
            over["num_nodes"] = num_nodes
        if strategy is not None:
            over["strategy"] = strategy
        if precision is not None:
            over["precision"] = precision
        return fn(*args, trainer_overrides=over, **kwargs)

    return wrapper
