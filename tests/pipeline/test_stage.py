"""The run's stage cache: keys, content digests, chaining, restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from visctr.io import digest_files
from visctr.pipeline.stage import StageRunner
from visctr.stagedir import StageDir, finished


def _writer(content: str, calls: list[str]):
    def fn(d: Path) -> None:
        calls.append(content)
        (d / "out.txt").write_text(content)
        (d / "history.json").write_text(str(len(calls)))  # varies run to run, not an output

    return fn


def test_stage_runs_once_per_key_and_returns_the_content_digest(tmp_path):
    calls: list[str] = []
    s = StageRunner(echo=lambda _: None)
    d1 = s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    d2 = s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    assert calls == ["x"] and d1 == d2 == digest_files(tmp_path / "a", ["out.txt"])
    s.run(tmp_path / "a", {"k": 2}, _writer("y", calls), "a", ["out.txt"])
    assert calls == ["x", "y"]
    assert s.timings["a"] >= 0


def test_edited_output_is_recomputed(tmp_path):
    calls: list[str] = []
    msgs: list[str] = []
    s = StageRunner(echo=msgs.append)
    s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    (tmp_path / "a" / "out.txt").write_text("tampered")
    s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    assert calls == ["x", "x"]
    assert any("outputs changed" in m for m in msgs)
    (tmp_path / "a" / "out.txt").unlink()
    s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    assert calls == ["x", "x", "x"]


def test_identical_recompute_keeps_downstream_cached(tmp_path):
    calls: list[str] = []
    s = StageRunner(echo=lambda _: None)
    up = s.run(tmp_path / "up", {"cfg": 1}, _writer("same", calls), "up", ["out.txt"])
    s.run(tmp_path / "down", {"up": up}, _writer("d", calls), "down", ["out.txt"])
    # the upstream config changes but its output does not: the downstream key is unchanged
    up2 = s.run(tmp_path / "up", {"cfg": 2}, _writer("same", calls), "up", ["out.txt"])
    assert up2 == up
    s.run(tmp_path / "down", {"up": up2}, _writer("d", calls), "down", ["out.txt"])
    assert calls == ["same", "d", "same"]


def test_a_stage_keeping_its_own_record_and_the_runner_agree(tmp_path):
    """A stage function that records itself (as the encoder and CTR stages do) under the key
    the runner is given: its summary survives, and a rerun under either is cached."""
    calls: list[str] = []

    def fn(d: Path) -> None:
        calls.append("run")
        rec = StageDir(d, "k1", ["out.txt"])
        assert rec.cached() is None
        rec.start()
        (d / "out.txt").write_text("x")
        rec.finish(1.0, {"epochs": 3})

    s = StageRunner(echo=lambda _: None)
    digest = s.run(tmp_path / "a", "k1", fn, "a", ["out.txt"])
    assert finished(tmp_path / "a")["summary"] == {"epochs": 3}
    assert StageDir(tmp_path / "a", "k1", ["out.txt"]).cached() == digest
    assert s.run(tmp_path / "a", "k1", fn, "a", ["out.txt"]) == digest and calls == ["run"]
    # a record of another key is never taken as done
    assert StageDir(tmp_path / "a", "k2", ["out.txt"]).cached() is None


def test_restart_recomputes_and_missing_outputs_are_an_error(tmp_path):
    calls: list[str] = []
    s = StageRunner(restart=True, echo=lambda _: None)
    s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    s.run(tmp_path / "a", {"k": 1}, _writer("x", calls), "a", ["out.txt"])
    assert calls == ["x", "x"]
    with pytest.raises(FileNotFoundError, match="no output"):
        s.run(tmp_path / "b", {"k": 1}, lambda d: None, "b", ["out.txt"])


def test_world_key_follows_the_catalog_content(tmp_path):
    from PIL import Image

    from visctr.pipeline.config import resolve_run_config
    from visctr.pipeline.run import world_key

    for cat, v in (("a", 10), ("b", 200)):
        (tmp_path / "c" / cat).mkdir(parents=True)
        Image.new("L", (8, 8), v).save(tmp_path / "c" / cat / "x.png")
    cfg = resolve_run_config("tiny", catalog=str(tmp_path / "c"))
    k1 = world_key(cfg)
    assert world_key(cfg) == k1
    Image.new("L", (8, 8), 11).save(tmp_path / "c" / "a" / "x.png")
    assert world_key(cfg) != k1
