"""Numeric precision: bf16 autocast where the CPU computes bf16 natively, fp32 elsewhere.

``precision: auto`` (the trainer default) resolves to ``bf16-mixed`` for the encoder stages
and ``embed`` when they run on a CPU with AVX512-BF16 or AMX (detected, not guessed), and
to ``32-true`` everywhere else: CTR training, GPUs, CPUs without native bf16 (where bf16
is emulated and several times *slower*). ``--precision 32`` forces fp32.

Losses always compute in fp32 (:func:`fp32`): softmax/logsumexp over similarities and
normalisation lose too much in bf16's 8-bit mantissa.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX).

    ``VISCTR_CPU_BF16=0|1`` overrides the detection (e.g. to measure the other path)."""
    forced = os.environ.get("VISCTR_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _on_cpu(accelerator: str) -> bool:
    if accelerator == "cpu":
        return True
    if accelerator in ("gpu", "cuda", "mps", "tpu"):
        return False
    import torch

    return not torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str = "auto", bf16_ok: bool = False) -> str:
    """The Lightning precision string for ``precision`` (``auto`` resolved as above).

    ``bf16_ok``: the caller is an encoder stage or ``embed`` (CTR training stays fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if bf16_ok and _on_cpu(accelerator) and cpu_supports_bf16():
        return "bf16-mixed"
    return "32-true"


def fp32(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a loss with autocast off and its half-precision tensor arguments in fp32."""
    import torch

    low = (torch.float16, torch.bfloat16)

    def cast(v: Any) -> Any:  # fp64 stays fp64
        return v.float() if isinstance(v, torch.Tensor) and v.dtype in low else v

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=dev, enabled=False):
            return fn(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    return wrapper
