"""A pretrain run killed with SIGKILL mid-epoch resumes from its checkpoint and ends where an
uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from visctr.embeddings import read_embeddings
from visctr.encoders import embed
from visctr.world import World

pytestmark = pytest.mark.slow

CONFIG = """
pretrain:
  epochs: 25
  batch_size: 16
  probe_items: 0
  encoder: {width: 16, stages: 2, blocks: 2, embed_dim: 16}
trainer:
  checkpoint_every_n_steps: 0   # checkpoints at epoch ends only
  progress_bar: false
"""


def _cmd(world, out, cfg):
    return [
        sys.executable,
        "-m",
        "visctr.cli",
        "pretrain",
        "--world",
        str(world),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--seed",
        "1",
        "--accelerator",
        "cpu",
    ]


def _vectors(enc_dir, world, tmp):
    embed(enc_dir / "encoder.pt", world, tmp, device="cpu")
    return read_embeddings(tmp / "items.parquet")[1]


def test_kill_mid_epoch_then_resume_matches_uninterrupted(tiny_world_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cmd(tiny_world_dir, ref, cfg), check=True, env=env, capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(tiny_world_dir, out, cfg),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the first epoch is saved; the second has begun
    assert proc.poll() is None or proc.returncode == -signal.SIGKILL
    proc.wait()
    assert not (out / "encoder.pt").exists()  # no half-written artifact

    res = subprocess.run(_cmd(tiny_world_dir, out, cfg), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout + res.stderr

    world = World.load(tiny_world_dir)
    a = _vectors(ref, world, tmp_path / "ea")
    b = _vectors(out, world, tmp_path / "eb")
    np.testing.assert_allclose(a, b, atol=1e-4)
