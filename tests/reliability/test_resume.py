"""A pretrain run killed with SIGKILL mid-epoch resumes from its checkpoint and ends where an
uninterrupted run ends.

The kill is deterministic: the child process runs the same stage as ``visctr pretrain``
with one extra callback that SIGKILLs its own process a few steps into the second epoch,
after the first epoch's checkpoint is on disk. No timing races with a fast machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from visctr.embeddings import read_embeddings
from visctr.encoders import embed
from visctr.stagedir import finished
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
    assert finished(out) is None

    res = subprocess.run(_cmd(tiny_world_dir, out, cfg), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout + res.stderr

    world = World.load(tiny_world_dir)
    a = _vectors(ref, world, tmp_path / "ea")
    b = _vectors(out, world, tmp_path / "eb")
    np.testing.assert_allclose(a, b, atol=1e-4)


# ---- S2 (finetune): killed after a mid-epoch checkpoint -------------------------------------

# An epoch is 9 steps (300 items / s1_batch_size 32; the 480 clicks make 7 batches of 64,
# so the click stream cycles within an epoch), and a checkpoint is written every 4 steps.
S2_CONFIG = """
finetune:
  epochs: 3
  batch_size: 64
  s1_batch_size: 32
  extra_negatives: 16
  probe_items: 0
  encoder: {width: 16, stages: 2, blocks: 2, embed_dim: 16}
  s1: {proj_dim: 32, pred_dim: 16}
trainer:
  checkpoint_every_n_steps: 4   # mid-epoch checkpoints
  progress_bar: false
"""

# The stage of `visctr finetune`, plus a callback that kills the process at a given step.
S2_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import lightning as L
    from visctr.encoders.cli import _load_cfg
    from visctr.encoders.config import S2Config
    from visctr.encoders.stages import finetune
    from visctr.world import World

    class KillAtStep(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == int(sys.argv[4]):
                assert (Path(sys.argv[2]) / "checkpoints" / "last.ckpt").is_file()
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = _load_cfg(S2Config, "finetune", Path(sys.argv[3]), None, {"accelerator": "cpu"})
    finetune(World.load(sys.argv[1]), cfg, Path(sys.argv[2]), 1, callbacks=[KillAtStep()])
    """
)


def _s2_cmd(world, out, cfg):
    return [
        sys.executable, "-m", "visctr.cli", "finetune", "--world", str(world), "--out", str(out),
        "--config", str(cfg), "--seed", "1", "--accelerator", "cpu",
    ]  # fmt: skip


def _weights(enc_dir):
    from visctr.io import load_torch

    return load_torch(enc_dir / "encoder.pt")


@pytest.fixture(scope="module")
def s2_uninterrupted(tiny_world_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s2ref")
    cfg = tmp / "c.yaml"
    cfg.write_text(S2_CONFIG)
    ref = tmp / "ref"
    env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(_s2_cmd(tiny_world_dir, ref, cfg), check=True, env=env, capture_output=True)
    return cfg, ref


# kill at 14: resume from step 12, 3 batches into epoch 2 (both loaders mid-pass);
# kill at 17: resume from step 16, where the click stream has just ended its first pass
@pytest.mark.parametrize("kill_at,saved_at", [(14, 12), (17, 16)])
def test_s2_kill_after_mid_epoch_checkpoint_resumes_bit_identical(
    tiny_world_dir, tmp_path, s2_uninterrupted, kill_at, saved_at
):
    from visctr.io import load_torch

    cfg, ref = s2_uninterrupted
    env = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    child = [sys.executable, "-c", S2_KILLED_CHILD, str(tiny_world_dir), str(out), str(cfg)]
    proc = subprocess.run([*child, str(kill_at)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "encoder.pt").exists() and finished(out) is None
    ckpt = load_torch(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == saved_at and saved_at % 9  # mid-epoch
    positions = ckpt["callbacks"]["LoaderPositions"]  # where each loader stood in epoch 2
    assert {k: v["epoch"] for k, v in positions.items()} == {"click": 1, "catalog": 1}

    res = subprocess.run(_s2_cmd(tiny_world_dir, out, cfg), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout + res.stderr

    a, b = _weights(ref), _weights(out)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k  # bit-identical, not merely close
    for k, v in a["heads"]["s1"].items():
        assert torch.equal(v, b["heads"]["s1"][k]), k
    drop = {"seconds"}
    rows = [{k: v for k, v in r.items() if k not in drop} for r in json.loads(
        (ref / "history.json").read_text())]  # fmt: skip
    again = [{k: v for k, v in r.items() if k not in drop} for r in json.loads(
        (out / "history.json").read_text())]  # fmt: skip
    assert again == rows


# ---- CTR: killed mid-epoch, with a checkpoint after every Lightning step ----------------

CTR_CONFIG = """
batch_size: 128
inner_steps: 2          # 2 optimiser steps per Lightning step
max_epochs: 3
patience: 5
dropout: 0.2            # exercises the dropout RNG
shuffle_buffer: 1000    # several shuffle windows per epoch
read_rows: 500
debias: {enabled: true, triplets_per_step: 64}   # exercises the aux-loss generator
trainer:
  accelerator: cpu
  checkpoint_every_n_steps: 1   # a periodic checkpoint after every Lightning step
  num_threads: 1
  progress_bar: false
"""

# `visctr train-ctr`'s training call, plus a callback that kills the process: SIGKILL (a
# crash: resumed from the last periodic checkpoint) or SIGTERM (a preemption: saves where
# it stopped), at Lightning step 5 of the second epoch ("mid") or at the first epoch's
# last batch, where a periodic save falls due ("last": SIGKILL lands in its validation).
CTR_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import lightning as L
    import visctr.train
    from visctr.config import from_dict, read_yaml
    from visctr.ctr import CTRConfig, train_ctr
    from visctr.world import World

    world, emb, ref, out, cfg_file, how, where = sys.argv[1:8]
    sig = getattr(signal, how)

    class Kill(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            loop = trainer.fit_loop.epoch_loop.batch_progress
            if where == "mid" and trainer.current_epoch == 1 and loop.current.processed == 5:
                assert (Path(out) / "checkpoints" / "last.ckpt").is_file()
                os.kill(os.getpid(), sig)
            if where == "last" and loop.is_last_batch and how == "SIGTERM":
                os.kill(os.getpid(), sig)  # Lightning stops after this batch's validation

        def on_validation_start(self, trainer, *args):
            if where == "last" and how == "SIGKILL":
                os.kill(os.getpid(), sig)

    build = visctr.train.build_trainer
    def with_kill(*a, callbacks=None, **kw):
        return build(*a, callbacks=[Kill(), *(callbacks or [])], **kw)
    visctr.train.build_trainer = with_kill

    cfg = from_dict(CTRConfig, read_yaml(Path(cfg_file)), where=cfg_file)
    train_ctr(World.load(world), Path(emb), Path(out), cfg, 1, reference=Path(ref))
    """
)

CTR_ENV = {**os.environ, "VISCTR_QUIET": "1", "OMP_NUM_THREADS": "1"}


def _ctr_cmd(world, emb, ref, out, cfg):
    return [
        sys.executable, "-m", "visctr.cli", "train-ctr", "--world", str(world),
        "--embeddings", str(emb), "--reference", str(ref), "--out", str(out),
        "--config", str(cfg), "--seed", "1", "--accelerator", "cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ctr_uninterrupted(tiny_world_dir, tiny_embeddings, tiny_reference, tmp_path_factory):
    """(inputs, config file, run dir, printed metrics line) of the run never interrupted."""
    tmp = tmp_path_factory.mktemp("ctr_resume")
    cfg = tmp / "ctr.yaml"
    cfg.write_text(CTR_CONFIG)
    args = (tiny_world_dir, tiny_embeddings, tiny_reference)
    ref = tmp / "ref"
    res = subprocess.run(_ctr_cmd(*args, ref, cfg), env=CTR_ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return args, cfg, ref, res.stdout.splitlines()[-1]


def _history(run_dir):
    rows = json.loads((run_dir / "history.json").read_text())
    return [{k: v for k, v in h.items() if k != "seconds"} for h in rows]


@pytest.mark.parametrize(
    ("how", "where"),
    [("SIGKILL", "mid"), ("SIGTERM", "mid"), ("SIGKILL", "last"), ("SIGTERM", "last")],
)
def test_ctr_killed_then_resumed_is_the_uninterrupted_run(how, where, ctr_uninterrupted, tmp_path):
    """Weights (bit for bit), history and test metrics of a CTR run (S3 on, dropout on)
    killed and resumed are those of the run that was never interrupted: the resumed run
    continues the same shuffled stream at the same batch, with the same aux-loss and
    dropout draws, and a checkpoint never sits on an epoch's last batch (Lightning would
    resume from it past that epoch's validation)."""

    args, cfg, ref, metrics = ctr_uninterrupted
    out = tmp_path / "killed"
    child = [sys.executable, "-c", CTR_KILLED_CHILD, *map(str, (*args, out, cfg)), how, where]
    proc = subprocess.run(child, env=CTR_ENV, capture_output=True, text=True)
    want = -signal.SIGKILL if how == "SIGKILL" else 128 + signal.SIGTERM
    assert proc.returncode == want, proc.stderr[-2000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "model.pt").exists() and finished(out) is None

    res = subprocess.run(_ctr_cmd(*args, out, cfg), env=CTR_ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout
    assert res.stdout.splitlines()[-1] == metrics  # test AUC, logloss, gAUC, ...
    assert _history(out) == _history(ref)
    a = torch.load(ref / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
