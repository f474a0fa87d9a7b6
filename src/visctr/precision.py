"""Numeric precision: what ``precision: auto`` resolves to, and fp32 losses under autocast.

``auto`` (the trainer default) resolves, for the **encoder stages** (S1, S2, ResNet-C):

- on CUDA: ``bf16-mixed`` where the GPU computes bf16 (``torch.cuda.is_bf16_supported()``),
  ``16-mixed`` otherwise;
- on a CPU: ``32-true``, so that every CPU gives the same results. Whether bf16 pays
  depends on the CPU: ``benchmarks/s1_throughput.py`` gave bf16 / fp32 0.92x for the S1
  step on one AVX512-BF16 Xeon and 1.51x on an AVX512-BF16 AMD EPYC, and emulated bf16
  (AVX2) is several times slower. ``VISCTR_CPU_BF16=1`` opts the encoder stages into bf16
  under ``auto`` (run the benchmark to see whether it pays on yours), ``=0`` keeps fp32;
- elsewhere (MPS, ...): ``32-true``.

**CTR training and ``embed`` stay ``32-true`` under ``auto``** on every device: the
embeddings a run writes, the FAISS index over them and the exported fp32 encoder
(TorchScript/ONNX) must give the same vectors (bf16 moves them by ~3e-3). An explicit
``--precision bf16-mixed`` is honoured and recorded in the embeddings file.

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


def cpu_bf16_training() -> bool:
    """Whether ``auto`` trains the encoder stages in bf16 on a CPU: only when asked with
    ``VISCTR_CPU_BF16=1`` (faster on some CPUs, slower on others: the module docstring)."""
    return os.environ.get("VISCTR_CPU_BF16") == "1"


def _device_kind(accelerator: str) -> str:
    """``cpu``, ``cuda`` or ``other`` for a Lightning accelerator / torch device type."""
    if accelerator == "cpu":
        return "cpu"
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator != "auto":
        return "other"  # mps, tpu, ...
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, accelerator: str = "auto", bf16_ok: bool = False) -> str:
    """The Lightning precision string for ``precision`` (``auto`` resolved as above).

    ``bf16_ok``: the caller trains an encoder stage (CTR training and ``embed`` pass False
    and stay fp32 under ``auto``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    if not bf16_ok:
        return "32-true"
    kind = _device_kind(accelerator)
    if kind == "cuda":
        import torch

        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16-mixed" if bf16 else "16-mixed"
    if kind == "cpu" and cpu_bf16_training():
        return "bf16-mixed"
    return "32-true"


def on_cuda(accelerator: str) -> bool:
    """Whether a Lightning ``accelerator`` setting trains on a CUDA GPU here."""
    if _device_kind(accelerator) != "cuda":
        return False
    import torch

    return torch.cuda.is_available()


def cuda_defaults(accelerator: str) -> bool:
    """On CUDA: TF32 for the fp32 matmuls and convolutions that remain under mixed
    precision (``torch.set_float32_matmul_precision("high")``, cuDNN's TF32), the norm on
    A100/H100-class GPUs. Nothing changes on a CPU. Returns whether it applied."""
    if not on_cuda(accelerator):
        return False
    import torch

    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


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
