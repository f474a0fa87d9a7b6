"""SIGTERM outside training (``visctr simulate``, ``visctr embed``): exit 143, one line
saying what happened, and no partial output (an earlier complete output stays as it was).

The signal is sent deterministically: the child runs the CLI with one writer of
:mod:`visctr.io` / :mod:`visctr.embeddings` wrapped so that the process SIGTERMs itself
right after the first file of the output is written (the rest not yet). No timing races.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

# argv: module, function, calls before the signal, then the visctr arguments
CHILD = textwrap.dedent(
    """
    import importlib, os, signal, sys
    module, name, after = importlib.import_module(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), getattr(signal, os.environ.get("VISCTR_TEST_SIGNAL", "SIGTERM")))
        return out

    setattr(module, name, wrapped)
    from visctr.cli import main
    sys.argv = ["visctr", *sys.argv[4:]]
    main()
    """
)


def _default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal, even when the suite runs in the background
    (a shell's background job inherits SIGINT ignored, and Python then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_killed(module, name, after, *args, sig="SIGTERM"):
    env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1", "VISCTR_TEST_SIGNAL": sig}
    cmd = [sys.executable, "-c", CHILD, module, name, str(after), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=_default_sigint)


def _one_line(proc, code: int = 143) -> str:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("visctr:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def _png_folder(root, n=12):
    from PIL import Image

    for c in ("shoes", "bags"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (28, 28), 10 * i + (c == "bags") * 100).save(root / c / f"{i}.png")
    return root


def _simulate_args(tmp_path):
    """``visctr simulate`` of a small photo folder into ``runs/w``: (out, args)."""
    photos = _png_folder(tmp_path / "photos")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "world:\n  n_users: 10\n  n_queries: 60\n  n_random_queries: 20\n"
        "  n_retrieval_queries: 20\n  extra_retrieval_queries: 0\n"
    )
    out = tmp_path / "runs" / "w"
    out.parent.mkdir()
    args = ["simulate", "--catalog", photos, "--config", cfg, "--out", out]
    return out, args


def test_sigterm_during_simulate_exits_143_and_leaves_nothing(tmp_path):
    out, args = _simulate_args(tmp_path)
    # the first table is in the temporary world directory, the others are not yet
    proc = _run_killed("visctr.io", "write_parquet", 1, *args)
    line = _one_line(proc)
    assert "SIGTERM" in line and "'visctr simulate'" in line
    assert os.listdir(out.parent) == []  # no world, no temporary directory


def test_sigterm_during_embed_keeps_the_previous_embeddings(tiny_world_dir, tmp_path):
    from visctr.encoders import EncoderConfig, build_encoder
    from visctr.encoders.checkpoint import encoder_spec, save_encoder

    cfg = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=16)
    enc = build_encoder(cfg, 1, 28)
    save_encoder(tmp_path / "encoder.pt", enc, encoder_spec(enc, cfg, 1, 28))
    out = tmp_path / "emb"
    args = ["embed", "--encoder", tmp_path / "encoder.pt", "--world", tiny_world_dir,
            "--out", out, "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-m", "visctr.cli", *map(str, args)], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # the items' vectors are written, the queries' not yet
    proc = _run_killed("visctr.embeddings", "write_embeddings", 1, *args)
    line = _one_line(proc)
    assert "SIGTERM" in line and "'visctr embed'" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert sorted(os.listdir(tmp_path)) == ["emb", "encoder.pt"]  # no temporary directory


def test_ctrl_c_during_simulate_exits_130_with_one_line_and_leaves_nothing(tmp_path):
    """SIGINT outside training: exit 130, one line (not click's bare 'Aborted!'), no output."""
    out, args = _simulate_args(tmp_path)
    proc = _run_killed("visctr.io", "write_parquet", 1, *args, sig="SIGINT")
    line = _one_line(proc, 130)
    assert "Ctrl-C" in line and "'visctr simulate'" in line
    assert os.listdir(out.parent) == []
