"""A pretrain run killed with SIGKILL mid-epoch resumes from its checkpoint and ends where an
uninterrupted run ends.

The kill is deterministic: the child process runs the same stage as ``visctr pretrain``
with one extra callback that SIGKILLs its own process a few steps into the second epoch,
after the first epoch's checkpoint is on disk. No timing races with a fast machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from visctr.embeddings import read_embeddings
from visctr.encoders import embed
from visctr.world import World

pytestmark = pytest.mark.slow

CONFIG = """
pretrain:
  epochs: 3
  batch_size: 16
  probe_items: 0
  encoder: {width: 16, stages: 2, blocks: 2, embed_dim: 16}
trainer:
  checkpoint_every_n_steps: 0   # checkpoints at epoch ends only
  progress_bar: false
"""

# The stage of `visctr pretrain`, plus a callback that kills the process mid-epoch 2.
KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import lightning as L
    from visctr.encoders.cli import _load_cfg
    from visctr.encoders.config import S1Config
    from visctr.encoders.stages import pretrain
    from visctr.world import World

    class KillMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.current_epoch == 1 and trainer.fit_loop.epoch_loop.batch_progress.current.completed >= 3:
                assert (Path(sys.argv[2]) / "checkpoints" / "last.ckpt").is_file()
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = _load_cfg(S1Config, "pretrain", Path(sys.argv[3]), None, {"accelerator": "cpu"})
    pretrain(World.load(sys.argv[1]), cfg, Path(sys.argv[2]), 1, callbacks=[KillMidEpoch()])
    """
)


def _cmd(world, out, cfg):
    return [
        sys.executable, "-m", "visctr.cli", "pretrain", "--world", str(world), "--out", str(out),
        "--config", str(cfg), "--seed", "1", "--accelerator", "cpu",
    ]  # fmt: skip


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
    child = [sys.executable, "-c", KILLED_CHILD, str(tiny_world_dir), str(out), str(cfg)]
    proc = subprocess.run(child, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "encoder.pt").exists()  # no half-written artifact
    assert not (out / "done.json").exists()

    res = subprocess.run(_cmd(tiny_world_dir, out, cfg), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout + res.stderr

    world = World.load(tiny_world_dir)
    a = _vectors(ref, world, tmp_path / "ea")
    b = _vectors(out, world, tmp_path / "eb")
    np.testing.assert_allclose(a, b, atol=1e-4)
