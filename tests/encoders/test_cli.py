from __future__ import annotations

import pyarrow.parquet as pq
from click.testing import CliRunner

from visctr.encoders.cli import classify, embed, finetune, pretrain

TINY = """
pretrain:
  epochs: 1
  batch_size: 64
  probe_items: 100
  proj_dim: 32
  pred_dim: 16
  encoder: {width: 8, stages: 2, blocks: 1, embed_dim: 16}
  trainer: {progress_bar: false, accelerator: cpu}
finetune:
  batch_size: 64
  probe_items: 100
  extra_negatives: 16
  lambda_s1: 0.0
  encoder: {width: 8, stages: 2, blocks: 1, embed_dim: 16}
  trainer: {progress_bar: false}
"""


def test_cli_pretrain_finetune_embed(tiny_world_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY)
    r = CliRunner()
    res = r.invoke(
        pretrain,
        [
            "--world",
            str(tiny_world_dir),
            "--out",
            str(tmp_path / "s1"),
            "--config",
            str(cfg),
            "--seed",
            "1",
            "--accelerator",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "[pretrain] S1 objective: infonce (preset small)" in res.output
    enc = tmp_path / "s1" / "encoder.pt"
    res = r.invoke(
        finetune,
        [
            "--world",
            str(tiny_world_dir),
            "--out",
            str(tmp_path / "s2"),
            "--config",
            str(cfg),
            "--init",
            str(enc),
            "--epochs",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    res = r.invoke(
        embed,
        [
            "--world",
            str(tiny_world_dir),
            "--encoder",
            str(tmp_path / "s2" / "encoder.pt"),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "e" / "items.parquet").num_rows == 300


def test_cli_errors_are_one_line(tiny_world_dir, tmp_path):
    r = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("classify:\n  epoch: 3\n")
    res = r.invoke(
        classify,
        ["--world", str(tiny_world_dir), "--out", str(tmp_path / "o"), "--config", str(bad)],
    )
    assert res.exit_code == 2 and "unknown key 'epoch'" in res.output
    res = r.invoke(
        classify,
        [
            "--world",
            str(tiny_world_dir),
            "--out",
            str(tmp_path / "o"),
            "--config",
            str(tmp_path / "c.yaml"),
        ],
    )
    assert res.exit_code == 2 and "not found" in res.output
    res = r.invoke(
        pretrain, ["--world", str(bad), "--out", str(tmp_path / "o"), "--config", str(bad)]
    )
    assert res.exit_code == 2
    res = r.invoke(
        embed,
        [
            "--world",
            str(tiny_world_dir),
            "--encoder",
            str(tmp_path / "missing.pt"),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 2 and "missing.pt" in res.output
    res = r.invoke(
        embed,
        [
            "--world",
            str(tmp_path / "nowhere"),
            "--encoder",
            str(tmp_path / "missing.pt"),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 2 and "nowhere" in res.output


def test_cli_config_sections(tiny_world_dir, tmp_path):
    r = CliRunner()
    both = tmp_path / "both.yaml"
    both.write_text("pretrain: {epochs: 1}\ns1: {epochs: 1}\n")
    res = r.invoke(
        pretrain,
        ["--world", str(tiny_world_dir), "--out", str(tmp_path / "o"), "--config", str(both)],
    )
    assert res.exit_code == 2 and "keep one" in res.output
    none = tmp_path / "none.yaml"
    none.write_text("world: {}\n")
    res = r.invoke(
        finetune,
        ["--world", str(tiny_world_dir), "--out", str(tmp_path / "o"), "--config", str(none)],
    )
    assert res.exit_code == 2 and "'finetune' or 's2'" in res.output


def test_stage_verbs_resolve_the_stage_config_of_run(tmp_path):
    """``visctr pretrain|finetune|classify`` alone train what ``visctr run`` trains with the
    same preset, with and without a config file (a partial run config with a trainer)."""
    from visctr.encoders.cli import _load_cfg
    from visctr.encoders.config import ClassifyConfig, S1Config, S2Config
    from visctr.pipeline.config import resolve_run_config
    from visctr.presets import PRESET_NAMES

    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "s1: {epochs: 2, objective: {temperature: 0.3}}\ns2: {lambda_s1: 0.25}\n"
        "classify: {batch_size: 32}\nctr: {lr: 0.002}\n"
        "trainer: {accelerator: cpu, progress_bar: false}\n"
    )
    verbs = (("pretrain", S1Config, "s1"), ("finetune", S2Config, "s2"),
             ("classify", ClassifyConfig, "classify"))  # fmt: skip
    for preset in PRESET_NAMES:
        for path in (None, cfg):
            run = resolve_run_config(preset, path)
            for verb, cls, section in verbs:
                assert _load_cfg(cls, verb, path, None, {}, preset) == getattr(run, section), (
                    preset,
                    path,
                    verb,
                )
    assert resolve_run_config("small").s1.objective.method == "infonce"  # not the default
    from visctr.eval.cli import ctr_config

    for preset in PRESET_NAMES:  # and train-ctr trains run's CTR model
        for path in (None, cfg):
            assert ctr_config(preset, path) == resolve_run_config(preset, path).ctr, (preset, path)
    assert ctr_config("tiny").max_epochs == 1
