"""Progress and loggers of the shared trainer: one line per epoch when stdout is not a
terminal (no bar redraws), Lightning's bars on one; ``--logger csv|tensorboard`` through
Lightning's loggers, with a one-line error when tensorboard is not installed."""

from __future__ import annotations

import csv
import importlib.util
import warnings

import lightning as L
import pytest
import torch
from click.testing import CliRunner
from lightning.pytorch.callbacks import TQDMProgressBar

import visctr.train as train
from visctr.cli import main
from visctr.errors import ConfigError
from visctr.train import TrainerConfig, build_trainer


class _WithHistory(L.LightningModule):
    """Appends a history row per epoch, as the stages do (in its own epoch-end hook, which
    Lightning runs after the callbacks')."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.history: list[dict] = []
        self._losses: list[float] = []

    def training_step(self, batch, _):
        loss = self.lin(batch[0]).pow(2).mean()
        self.log("loss", loss.detach(), prog_bar=True)
        self._losses.append(float(loss))
        return loss

    def on_train_epoch_end(self):
        mean = sum(self._losses) / len(self._losses)
        self.history.append({"epoch": self.current_epoch + 1, "loss": mean, "seconds": 0.1})
        self._losses = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader():
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(40, 4, generator=g)), 4
    )


@pytest.fixture(autouse=True)
def _not_quiet(monkeypatch):
    monkeypatch.delenv("VISCTR_QUIET", raising=False)


def test_one_line_per_epoch_when_stdout_is_not_a_terminal(tmp_path, capsys):
    cfg = TrainerConfig(accelerator="cpu", progress_bar=True, checkpoint_every_n_steps=0)
    module = _WithHistory()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_trainer(cfg, tmp_path / "stage", max_epochs=3).fit(module, _loader())
    # nor torch's deprecation of the LeafSpec that Lightning builds on every run
    assert [str(w.message) for w in seen if "LeafSpec" in str(w.message)] == []
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert [line.split("  ")[0] for line in lines] == [
        "[stage] epoch 1/3",
        "[stage] epoch 2/3",
        "[stage] epoch 3/3",
    ]
    # each line carries that epoch's history row (its mean loss), not a bar's last value
    for line, row in zip(lines, module.history, strict=True):
        assert f"loss {row['loss']:.4g}" in line


def test_bars_on_a_terminal_lines_elsewhere_none_when_quiet(tmp_path, monkeypatch):
    cfg = TrainerConfig(accelerator="cpu", progress_bar=True)
    monkeypatch.setattr(train, "progress_on_terminal", lambda: True)
    assert isinstance(build_trainer(cfg, tmp_path, 1).progress_bar_callback, TQDMProgressBar)
    monkeypatch.setattr(train, "progress_on_terminal", lambda: False)
    bar = build_trainer(cfg, tmp_path, 1).progress_bar_callback
    assert type(bar).__name__ == "EpochLines"
    monkeypatch.setenv("VISCTR_QUIET", "1")
    assert build_trainer(cfg, tmp_path, 1).progress_bar_callback is None


def test_csv_logger_writes_step_metrics_and_epoch_history(tmp_path):
    cfg = TrainerConfig(accelerator="cpu", progress_bar=False, logger="csv")
    trainer = build_trainer(cfg, tmp_path, max_epochs=2, log_every_n_steps=1)
    trainer.fit(_WithHistory(), _loader())
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(1 for r in rows if r.get("loss")) == 20  # 10 steps x 2 epochs
    assert [float(r["epoch/loss"]) for r in rows if r.get("epoch/loss")] == pytest.approx(
        [h["loss"] for h in trainer.lightning_module.history]
    )


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ValueError, match="logger must be one of none, csv, tensorboard"):
        TrainerConfig(logger="wandb")


def _no_tensorboard(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a),
    )


def test_tensorboard_without_the_package_is_one_line_before_any_output(
    tiny_world_dir, tmp_path, monkeypatch
):
    _no_tensorboard(monkeypatch)
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        build_trainer(TrainerConfig(logger="tensorboard"), tmp_path, 1)
    out = tmp_path / "s1"
    res = CliRunner().invoke(
        main,
        [
            "pretrain",
            "--world",
            str(tiny_world_dir),
            "--out",
            str(out),
            "--logger",
            "tensorboard",
        ],  # fmt: skip
    )
    assert res.exit_code == 2
    assert "logger tensorboard needs the tensorboard package" in res.output
    assert not out.exists()
    # the same from a config file's trainer section
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pretrain: {epochs: 1}\ntrainer: {logger: tensorboard}\n")
    res = CliRunner().invoke(
        main, ["pretrain", "--world", str(tiny_world_dir), "--out", str(out), "--config", str(cfg)]
    )
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "needs the tensorboard package" in res.output and not out.exists()


TINY_S1 = """
pretrain:
  epochs: 2
  batch_size: 64
  probe_items: 100
  proj_dim: 32
  pred_dim: 16
  encoder: {width: 8, stages: 2, blocks: 1, embed_dim: 16}
  trainer: {progress_bar: true, accelerator: cpu}
"""


def test_pretrain_and_train_ctr_log_csv_and_print_epoch_lines(
    tiny_world_dir, tiny_embeddings, tmp_path
):
    """The verbs end to end: ``--logger csv`` writes Lightning's metrics.csv under OUT/logs,
    and the (non-terminal) output has one line per epoch with the stage's history."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_S1)
    res = CliRunner().invoke(
        main,
        [
            "pretrain",
            "--world",
            str(tiny_world_dir),
            "--out",
            str(tmp_path / "s1"),
            "--config",
            str(cfg),
            "--logger",
            "csv",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output
    lines = [line for line in res.output.splitlines() if line.startswith("[s1] epoch")]
    assert len(lines) == 2 and "knn_acc" in lines[1] and "loss" in lines[1]
    with open(tmp_path / "s1" / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch/knn_acc"] for r in rows if r.get("epoch/knn_acc")] != []

    ctr = tmp_path / "ctr.yaml"
    ctr.write_text("max_epochs: 2\nbatch_size: 512\npatience: 5\n")
    res = CliRunner().invoke(
        main,
        [
            "train-ctr",
            "--world",
            str(tiny_world_dir),
            "--embeddings",
            str(tiny_embeddings),
            "--out",
            str(tmp_path / "m"),
            "--config",
            str(ctr),
            "--accelerator",
            "cpu",
            "--logger",
            "csv",
        ],  # fmt: skip
    )
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("[m] epoch")]
    assert len(lines) == 2 and all("val_auc" in line for line in lines)
    with open(tmp_path / "m" / "logs" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len([r for r in rows if r.get("epoch/val_auc")]) == 2
    # val_auc and the epoch/* rows share one step axis (the global step)
    val_steps = [r["step"] for r in rows if r.get("val_auc")]
    epoch_steps = [r["step"] for r in rows if r.get("epoch/val_auc")]
    assert len(val_steps) == 2 and val_steps == epoch_steps, rows


def test_the_logger_is_not_part_of_any_stage_key(tiny_world, tiny_embeddings):
    """Switching the logger reuses finished encoders and CTR models (and keys computed
    before the option existed stay the same)."""
    from visctr.ctr import CTRConfig
    from visctr.ctr.training import run_key
    from visctr.encoders import S1Config
    from visctr.encoders.stages import stage_key
    from visctr.pipeline.config import resolve_run_config
    from visctr.pipeline.methods import ENCODERS

    csv_trainer = TrainerConfig(logger="csv")
    assert stage_key("s1", S1Config(trainer=csv_trainer), 0, tiny_world) == stage_key(
        "s1", S1Config(), 0, tiny_world
    )
    key = run_key(tiny_world, tiny_embeddings, CTRConfig(trainer=csv_trainer), 0, None)
    assert key == run_key(tiny_world, tiny_embeddings, CTRConfig(), 0, None)
    logged = resolve_run_config("tiny", trainer_overrides={"logger": "csv"})
    plain = resolve_run_config("tiny")
    for recipe in ENCODERS.values():
        assert recipe.key(logged, 0, tiny_world, None) == recipe.key(plain, 0, tiny_world, None)
        assert recipe.key(logged, 0, tiny_world, None) != recipe.key(plain, 1, tiny_world, None)
