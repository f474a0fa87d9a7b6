"""Shared by the memory benchmarks: run a measurement in a fresh interpreter, compare peaks."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(code: str, argv: list[str], what: str) -> dict:
    """Run ``python -c code *argv``; its last stdout line is a JSON dict, returned parsed.

    A fresh process per size, so each ``ru_maxrss`` is that size's own peak; exits with the
    child's stderr tail, naming ``what`` failed, when it does.
    """
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{what} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def print_peak_ratio(results: list[dict], size_key: str, unit: str) -> None:
    """``peak RSS ratio for Nx <unit>: R x (+D MB)`` between the first and last result."""
    if len(results) < 2:
        return
    a, b = results[0], results[-1]
    print(
        f"peak RSS ratio for {b[size_key] / a[size_key]:.0f}x {unit}: "
        f"{b['peak_mb'] / a['peak_mb']:.2f}x ({b['peak_mb'] - a['peak_mb']:+.0f} MB)"
    )
