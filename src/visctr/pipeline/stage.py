"""Cached stages of a run, on top of :mod:`visctr.stagedir` (the one ``stage.json`` record
every stage keeps, whoever runs it).

A stage's key is its config plus the content of what it reads (chained from its upstream
stages' output digests, or hashed from the input files by the stage itself), so:

- a config change recomputes that stage and everything downstream of it;
- an upstream stage recomputed with byte-identical outputs (e.g. a re-embed) does not
  invalidate what follows, since timings are never part of a key or a digest;
- outputs replaced or edited after the stage finished are detected (digest mismatch) and
  the stage runs again instead of reporting a stale result.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visctr.config import config_hash
from visctr.stagedir import StageDir


@dataclass
class StageRunner:
    """Runs stages of one run directory, echoing progress and summing timings by label."""

    restart: bool = False
    echo: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self,
        stage_dir: Path,
        key: Any,
        fn: Callable[[Path], Any],
        label: str,
        outputs: Iterable[str],
    ) -> str:
        """Run ``fn(stage_dir)`` unless it is done for ``key`` (a hash, or an object to hash:
        a stage that keeps its own record is given the key it computes itself, so both
        agree); returns the content digest of its ``outputs`` (glob patterns under
        ``stage_dir``) for downstream keys."""
        stage = StageDir(stage_dir, key if isinstance(key, str) else config_hash(key), outputs)
        if self.restart and stage.path.exists():
            shutil.rmtree(stage.path)
        digest = stage.cached()
        if digest is not None:
            self.echo(f"  {label}: cached ({stage.path})")
            return digest
        if stage.outputs_changed():
            self.echo(f"  {label}: outputs changed since they were written, recomputing")
        # a stage that keeps its own record (encoders, CTR) marks itself running once it
        # has claimed its directory; the runner records every stage done
        stage.path.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        fn(stage.path)
        dt = time.perf_counter() - t0
        self.timings[label] = self.timings.get(label, 0.0) + dt
        digest = stage.finish(seconds=dt)
        self.echo(f"  {label}: done in {dt:.1f}s")
        return digest

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - t0
        return out
