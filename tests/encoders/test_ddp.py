"""S1 and S2 under Lightning DDP with 2 CPU processes (gloo): complete, loss decreases.

Both use losses whose negatives are gathered from the other rank (InfoNCE for S1, the
click loss with cross-rank false-negative masking for S2)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

CONFIG = """
{verb}:
  epochs: 3
  batch_size: 32
  probe_items: 0
  {extra}
  encoder: {{width: 16, stages: 2, blocks: 2, embed_dim: 16}}
trainer:
  progress_bar: false
"""


@pytest.mark.parametrize(
    "verb,extra", [("pretrain", "method: infonce"), ("finetune", "lambda_s1: 0.0")]
)
def test_stage_two_processes_gloo(tiny_world_dir, tmp_path, verb, extra, visctr_ddp):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(verb=verb, extra=extra))
    out = tmp_path / verb
    res = visctr_ddp(verb, "--world", str(tiny_world_dir), "--out", str(out), "--config", str(cfg))
    assert res.stdout.count("encoder.pt") == 2  # rank 0 only: its summary line and the path
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3
    assert history[-1]["loss"] < history[0]["loss"]
