"""Cached stages of a run: a stage directory is done when its ``stage.json`` holds the key
it was computed for *and* its outputs still have the content digest recorded there.

A stage's key is its config plus the content digests of the stages it reads (chained), so:

- a config change recomputes that stage and everything downstream of it;
- an upstream stage recomputed with byte-identical outputs (e.g. a re-embed) does not
  invalidate what follows, since timings are never part of a key or a digest;
- outputs replaced or edited after the stage finished are detected (digest mismatch) and
  the stage runs again instead of reporting a stale result.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visctr.config import config_hash
from visctr.io import digest_files, write_json

MARKER = "stage.json"


@dataclass
class StageRunner:
    """Runs stages of one run directory, echoing progress and summing timings by label."""

    restart: bool = False
    echo: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def run(
        self,
        stage_dir: Path,
        key_obj: Any,
        fn: Callable[[Path], Any],
        label: str,
        outputs: Iterable[str],
    ) -> str:
        """Run ``fn(stage_dir)`` unless it is done for ``key_obj``; returns the content digest
        of its ``outputs`` (glob patterns under ``stage_dir``) for downstream keys."""
        stage_dir = Path(stage_dir)
        outputs = tuple(outputs)
        key = config_hash(key_obj)
        if self.restart and stage_dir.exists():
            shutil.rmtree(stage_dir)
        done = _read_marker(stage_dir)
        if done.get("key") == key:
            try:
                digest = digest_files(stage_dir, outputs)
            except FileNotFoundError:
                digest = None
            if digest is not None and digest == done.get("digest"):
                self.echo(f"  {label}: cached ({stage_dir})")
                return digest
            self.echo(f"  {label}: outputs changed since they were written, recomputing")
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / MARKER).unlink(missing_ok=True)
        # the stage functions keep their own completion record; a key change must not let
        # them skip (a resumable checkpoint of the same config is still used)
        (stage_dir / "done.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        fn(stage_dir)
        dt = time.perf_counter() - t0
        self.timings[label] = self.timings.get(label, 0.0) + dt
        digest = digest_files(stage_dir, outputs)
        write_json({"key": key, "digest": digest, "seconds": round(dt, 2)}, stage_dir / MARKER)
        self.echo(f"  {label}: done in {dt:.1f}s")
        return digest

    def timed(self, label: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - t0
        return out


def _read_marker(stage_dir: Path) -> dict:
    try:
        data = json.loads((stage_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
