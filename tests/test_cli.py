import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from visctr.cli import main


def test_help_lists_every_verb():
    out = CliRunner().invoke(main, ["--help"]).output
    for verb in (
        "simulate",
        "pretrain",
        "finetune",
        "classify",
        "embed",
        "train-ctr",
        "evaluate",
        "run",
    ):
        assert verb in out, verb


@pytest.mark.parametrize(
    "make_catalog,match",
    [
        (lambda p: str(p / "does-not-exist"), "catalog not found"),
        (lambda p: _manifest_missing_column(p), "missing column 'category'"),
    ],
)
def test_simulate_bad_input_one_line_no_output(tmp_path, make_catalog, match):
    out = tmp_path / "world"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "visctr.cli",
            "simulate",
            "--preset",
            "tiny",
            "--catalog",
            make_catalog(tmp_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not any(p.name.startswith(".world") for p in tmp_path.iterdir())


def _manifest_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"item_id": [1], "image_path": ["a.png"]}), path)
    return str(path)


def test_debug_flag_shows_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "visctr.cli",
            "--debug",
            "simulate",
            "--preset",
            "tiny",
            "--catalog",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_unknown_config_key_is_an_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("world:\n  n_queriez: 10\n")
    res = CliRunner().invoke(
        main, ["simulate", "--preset", "tiny", "--config", str(cfg), "--out", str(tmp_path / "w")]
    )
    assert res.exit_code == 2
    assert "unknown key 'n_queriez'" in res.output
    assert not (tmp_path / "w").exists()
