"""One record per stage directory: ``stage.json``. Every cached stage of visctr (the world,
the encoders, the embeddings, the CTR models) keeps its state there, whether ``visctr
run`` or the stage's own verb (``pretrain``, ``finetune``, ``train-ctr``, ...) runs it:

``{"version": 1, "key": K, "state": "running" | "done", "digest": D, "seconds": s,
"summary": {...}}``

- ``key``: the hash of the stage's config and of the *content* of what it reads (world
  tables, the encoder it starts from, embeddings), so inputs replaced under the same path
  are a new key. Timings and loggers are never part of it.
- ``running``: written when the work starts. Checkpoints under ``checkpoints/`` belong to
  that key; a different key removes them (a killed run of the same config resumes).
- ``done``: written last, with ``digest``, the content digest of the stage's outputs. A
  stage is cached only while both the key and that digest still match, so outputs edited
  or replaced after the fact are recomputed, never reported as fresh.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from visctr.io import digest_files, write_json

MARKER = "stage.json"
VERSION = 1


def read_record(stage_dir: str | Path) -> dict:
    """The stage's record, or ``{}`` when there is none or it is unreadable."""
    try:
        data = json.loads((Path(stage_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == VERSION else {}


def finished(stage_dir: str | Path) -> dict | None:
    """The record of a finished stage (``summary`` holds its figures), else ``None``."""
    rec = read_record(stage_dir)
    return rec if rec.get("state") == "done" else None


def content_digest(root: str | Path, patterns: Iterable[str]) -> str | None:
    """``digest_files`` of the inputs under ``root``, ``None`` when there are none (reading
    them then says what is missing)."""
    try:
        return digest_files(Path(root), tuple(patterns))
    except (FileNotFoundError, NotADirectoryError):
        return None


class StageDir:
    """One stage's directory, for one ``key``, with its ``outputs`` (glob patterns)."""

    def __init__(self, path: str | Path, key: str, outputs: Iterable[str]) -> None:
        self.path = Path(path)
        self.key = key
        self.outputs = tuple(outputs)

    def cached(self) -> str | None:
        """The outputs' digest when the stage is done for this key and its outputs are
        unchanged since; else ``None``."""
        rec = read_record(self.path)
        if rec.get("state") != "done" or rec.get("key") != self.key:
            return None
        digest = content_digest(self.path, self.outputs)
        return digest if digest is not None and digest == rec.get("digest") else None

    def outputs_changed(self) -> bool:
        """Done for this key, but the outputs differ from what was written (edited, replaced
        or removed since)."""
        rec = read_record(self.path)
        return (
            rec.get("state") == "done"
            and rec.get("key") == self.key
            and content_digest(self.path, self.outputs) != rec.get("digest")
        )

    def start(self) -> None:
        """Mark the stage running for this key. Checkpoints left by another key (or by no
        known key) are removed, so only a run of the same config resumes from them."""
        rec = read_record(self.path)
        if rec.get("key") != self.key:
            shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json({"version": VERSION, "key": self.key, "state": "running"}, self.path / MARKER)

    def finish(self, seconds: float | None = None, summary: dict[str, Any] | None = None) -> str:
        """Record the stage done (written last); returns its outputs' digest. A summary or
        time already recorded for this key is kept unless given again."""
        rec = read_record(self.path)
        same = rec.get("key") == self.key
        if summary is None:
            summary = rec.get("summary", {}) if same else {}
        if seconds is None:
            seconds = rec.get("seconds") if same else None
        digest = digest_files(self.path, self.outputs)  # no output is an error
        write_json(
            {
                "version": VERSION,
                "key": self.key,
                "state": "done",
                "digest": digest,
                "seconds": None if seconds is None else round(float(seconds), 2),
                "summary": summary,
            },
            self.path / MARKER,
        )
        return digest


def any_progress(root: str | Path) -> bool:
    """Whether anything under ``root`` can be resumed or reused: a finished stage or a
    training checkpoint."""
    root = Path(root)
    return any(p.suffix == ".ckpt" for p in root.rglob("*")) or any(
        finished(p.parent) is not None for p in root.rglob(MARKER)
    )
