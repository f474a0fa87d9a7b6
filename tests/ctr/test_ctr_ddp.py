"""CTR training (with S3) under Lightning DDP, 2 CPU processes (gloo): every rank takes the
same number of steps (no all-reduce left waiting), training completes, the loss decreases,
and rank 0 alone writes the model and prints the metrics."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_ctr_two_processes_gloo(
    tiny_world_dir, tiny_embeddings, tiny_reference, tmp_path, visctr_ddp
):
    cfg = tmp_path / "ctr.yaml"
    cfg.write_text("max_epochs: 3\npatience: 5\nbatch_size: 256\ntrainer:\n  progress_bar: false\n")
    out = tmp_path / "m"
    res = visctr_ddp(
        "train-ctr", "--world", str(tiny_world_dir), "--embeddings", str(tiny_embeddings),
        "--reference", str(tiny_reference), "--debias", "--out", str(out), "--config", str(cfg),
    )  # fmt: skip
    assert res.stdout.count("train-ctr:") == 1 and "auc_random_exposure=" in res.stdout
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    n_fit = json.loads((out / "stage.json").read_text())["summary"]["train_impressions"]
    # each rank's share of the fit rows, in whole batches
    assert history[0]["steps"] == max(1, n_fit // (2 * 256))
