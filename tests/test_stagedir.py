"""The one stage record (``stage.json``): done only for its key and unchanged outputs;
checkpoints belong to the key that wrote them."""

from __future__ import annotations

import json

import pytest

from visctr.stagedir import MARKER, StageDir, any_progress, finished, read_record


def _done(d, key="k", text="x", summary=None):
    rec = StageDir(d, key, ["out.txt"])
    rec.start()
    (d / "out.txt").write_text(text)
    return rec, rec.finish(2.5, summary or {"epochs": 1})


def test_done_only_for_its_key_and_unchanged_outputs(tmp_path):
    rec, digest = _done(tmp_path)
    assert rec.cached() == digest and not rec.outputs_changed()
    assert StageDir(tmp_path, "other", ["out.txt"]).cached() is None
    (tmp_path / "out.txt").write_text("edited")
    assert rec.cached() is None and rec.outputs_changed()
    (tmp_path / "out.txt").unlink()
    assert rec.cached() is None and rec.outputs_changed()


def test_running_is_not_finished_and_not_progress(tmp_path):
    StageDir(tmp_path / "s", "k", ["out.txt"]).start()
    assert read_record(tmp_path / "s")["state"] == "running"
    assert finished(tmp_path / "s") is None and not any_progress(tmp_path)
    (tmp_path / "s" / "out.txt").write_text("x")
    StageDir(tmp_path / "s", "k", ["out.txt"]).finish()
    assert finished(tmp_path / "s") is not None and any_progress(tmp_path)


def test_checkpoints_belong_to_the_key_that_wrote_them(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    StageDir(tmp_path, "k", ["out.txt"]).start()
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"state")
    assert any_progress(tmp_path)
    StageDir(tmp_path, "k", ["out.txt"]).start()  # the same config resumes
    assert ckpt.is_file()
    StageDir(tmp_path, "k2", ["out.txt"]).start()  # another config starts afresh
    assert not ckpt.exists() and read_record(tmp_path)["key"] == "k2"


def test_checkpoints_without_a_record_are_not_resumed(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"planted")
    StageDir(tmp_path, "k", ["out.txt"]).start()
    assert not ckpt.exists()


def test_finish_keeps_the_stage_summary_and_needs_outputs(tmp_path):
    rec, _ = _done(tmp_path, summary={"epochs": 7})
    rec.finish(9.0)  # the runner records its own time after the stage's own record
    got = finished(tmp_path)
    assert got["summary"] == {"epochs": 7} and got["seconds"] == 9.0
    with pytest.raises(FileNotFoundError, match="no output"):
        StageDir(tmp_path / "empty", "k", ["out.txt"]).finish()


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"version": 99, "state": "done"}'])
def test_damaged_record_is_no_record(tmp_path, text):
    (tmp_path / "out.txt").write_text("x")
    (tmp_path / MARKER).write_text(text)
    assert read_record(tmp_path) == {} and finished(tmp_path) is None
    assert StageDir(tmp_path, "k", ["out.txt"]).cached() is None


def test_timings_are_not_part_of_the_digest(tmp_path):
    _, d1 = _done(tmp_path / "a")
    _, d2 = _done(tmp_path / "b")
    assert d1 == d2
    assert json.loads((tmp_path / "a" / MARKER).read_text())["digest"] == d1
