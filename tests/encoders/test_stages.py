"""Tiny runs of every stage on the tiny world: they learn, write loadable artifacts,
cache, resume after a crash, and are reproducible."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from visctr.encoders import classify, embed, finetune, load_encoder, pretrain
from visctr.errors import ConfigError, InputError

from .conftest import classify_config, s1_config, s2_config

# the encoder stages train under precision: auto, bf16 on the CPU with VISCTR_CPU_BF16=1
pytestmark = pytest.mark.precision


@pytest.fixture(scope="module")
def s1_run(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("s1")
    return pretrain(tiny_world, s1_config(), out, seed=0)


def _history(path):
    return json.loads((path.parent / "history.json").read_text())


def test_pretrain_learns_and_writes_artifacts(s1_run):
    hist = _history(s1_run)
    assert len(hist) == 3
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert 0 <= hist[-1]["knn_acc"] <= 1
    obj = torch.load(s1_run, map_location="cpu", weights_only=True)  # plain dict, no pickles
    assert obj["config"]["backbone"] == "convnet" and "s1" in obj["heads"]
    done = json.loads((s1_run.parent / "stage.json").read_text())
    assert (
        done["state"] == "done"
        and done["summary"]["epochs"] == 3
        and (s1_run.parent / "config.yaml").is_file()
    )


def test_lightning_checkpoint_loads_weights_only(s1_run):
    ckpt = s1_run.parent / "checkpoints" / "last.ckpt"
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert obj["visctr_history"] and "state_dict" in obj


def test_stage_cache_returns_without_training(s1_run, tiny_world, capsys):
    mtime = s1_run.stat().st_mtime_ns
    assert pretrain(tiny_world, s1_config(), s1_run.parent, seed=0) == s1_run
    assert s1_run.stat().st_mtime_ns == mtime
    assert "up to date" in capsys.readouterr().out


def test_stage_cache_follows_content_not_paths(s1_run, tiny_world_dir, tmp_path, capsys):
    """The key is the content of what the stage reads, and done means the outputs are the
    ones recorded: copies are cached, an edited encoder.pt or a world edited in place
    (its world.json unchanged) is trained again, never served stale."""
    import shutil

    from visctr.world import World

    out, wdir = tmp_path / "s1", tmp_path / "world"
    shutil.copytree(s1_run.parent, out)
    shutil.copytree(tiny_world_dir, wdir)
    capsys.readouterr()
    pretrain(World.load(wdir), s1_config(), out, seed=0)  # same content, other paths
    assert "up to date" in capsys.readouterr().out

    (out / "encoder.pt").write_bytes(b"replaced by hand")
    path = pretrain(World.load(wdir), s1_config(), out, seed=0)
    assert "up to date" not in capsys.readouterr().out
    assert torch.equal(
        load_encoder(path).state_dict()["backbone.features.0.weight"],
        load_encoder(s1_run).state_dict()["backbone.features.0.weight"],
    )  # retrained to the same weights (resumed from its final checkpoint)

    images = np.load(wdir / "images" / "items.npy", mmap_mode="r+")
    images[:50] = 255 - images[:50]
    images.flush()
    del images
    pretrain(World.load(wdir), s1_config(), out, seed=0)
    assert "up to date" not in capsys.readouterr().out
    assert not torch.equal(
        load_encoder(out / "encoder.pt").state_dict()["backbone.features.0.weight"],
        load_encoder(s1_run).state_dict()["backbone.features.0.weight"],
    )


def test_finetune_from_s1_learns_and_embeds(s1_run, tiny_world, tmp_path):
    enc_path = finetune(tiny_world, s2_config(), tmp_path / "s2", seed=0, init=s1_run)
    hist = _history(enc_path)
    assert hist[-1]["click"] < hist[0]["click"]
    assert {"loss", "click", "s1", "knn_acc"} <= set(hist[-1])
    items, queries = embed(enc_path, tiny_world, tmp_path / "emb", batch_size=100)
    it = pq.read_table(items)
    assert str(it.schema.field("vector").type) == "fixed_size_list<element: float>[16]"
    assert it.column("item_id").to_numpy().tolist() == tiny_world.items["item_id"].tolist()
    vec = np.asarray(it.column("vector").combine_chunks().flatten()).reshape(-1, 16)
    assert np.isfinite(vec).all()
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    qt = pq.read_table(queries)
    assert qt.num_rows == len(tiny_world.queries["query_id"])
    # the exported vectors are what load_encoder computes
    enc = load_encoder(enc_path)
    assert not enc.training
    row = int(tiny_world.items["image_row"][3])
    with torch.inference_mode():
        z = enc.encode(torch.from_numpy(np.array(tiny_world.item_images[row : row + 1])))
    np.testing.assert_allclose(vec[3], z[0].numpy(), atol=1e-5)


def test_finetune_from_scratch_clicks_only(tiny_world, tmp_path):
    enc_path = finetune(tiny_world, s2_config(lambda_s1=0.0, negatives_grad=True), tmp_path, seed=0)
    hist = _history(enc_path)
    assert hist[-1]["loss"] < hist[0]["loss"] and "s1" not in hist[-1]
    assert torch.load(enc_path, weights_only=True)["heads"] == {}


def test_classify_learns(tiny_world, tmp_path):
    hist = _history(classify(tiny_world, classify_config(), tmp_path, seed=0))
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_same_seed_same_weights(tiny_world, tmp_path):
    cfg = classify_config(epochs=1)
    a = load_encoder(classify(tiny_world, cfg, tmp_path / "a", seed=3)).state_dict()
    b = load_encoder(classify(tiny_world, cfg, tmp_path / "b", seed=3)).state_dict()
    c = load_encoder(classify(tiny_world, cfg, tmp_path / "c", seed=4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class _Crash(L.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.at_step:
            raise RuntimeError("simulated crash")


class _StartStep(L.Callback):
    start: int | None = None

    def on_train_start(self, trainer, *args) -> None:
        self.start = trainer.global_step


def test_killed_run_resumes_from_checkpoint(tiny_world, tmp_path):
    cfg = s1_config(epochs=2)  # 300 items / 64 = 4 steps per epoch; checkpoint every 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tiny_world, cfg, tmp_path, seed=0, callbacks=[_Crash(5)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "encoder.pt").exists()
    probe = _StartStep()
    pretrain(tiny_world, cfg, tmp_path, seed=0, callbacks=[probe])
    assert probe.start is not None and probe.start >= 4
    assert len(_history(tmp_path / "encoder.pt")) == 2
    # a different config does not resume the old checkpoint
    probe2 = _StartStep()
    pretrain(tiny_world, s1_config(epochs=1), tmp_path, seed=0, callbacks=[probe2])
    assert probe2.start == 0


def test_finetune_init_errors(s1_run, tiny_world, tmp_path):
    with pytest.raises(InputError, match="not found"):
        finetune(tiny_world, s2_config(), tmp_path / "x", seed=0, init=tmp_path / "nope.pt")
    from visctr.encoders import EncoderConfig

    other = s2_config(encoder=EncoderConfig(width=8, stages=2, blocks=1, embed_dim=8))
    with pytest.raises(ConfigError, match="make the encoder sections match"):
        finetune(tiny_world, other, tmp_path / "y", seed=0, init=s1_run)


class _HeadsAtStart(L.Callback):
    """The S1 objective's state when S2 training starts (after the init heads loaded)."""

    state: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.objective.state_dict().items()}


def _assert_heads_continued(start: dict, saved: dict) -> None:
    assert start is not None and set(start) == set(saved)
    assert all(torch.equal(start[k], saved[k]) for k in saved)


def test_finetune_continues_the_s1_heads(s1_run, tiny_world, tmp_path):
    probe = _HeadsAtStart()
    finetune(tiny_world, s2_config(epochs=1), tmp_path, seed=0, init=s1_run, callbacks=[probe])
    _assert_heads_continued(probe.state, torch.load(s1_run, weights_only=True)["heads"]["s1"])


def test_finetune_continues_heads_of_old_encoder_files(s1_run, tiny_world, tmp_path):
    # files written before the S1 objective config was one dataclass: a 3-key s1_spec
    obj = torch.load(s1_run, weights_only=True)
    obj["heads"]["s1_spec"] = {"method": "simsiam", "proj_dim": 32, "pred_dim": 16}
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    probe = _HeadsAtStart()
    finetune(tiny_world, s2_config(epochs=1), tmp_path / "s2", seed=0, init=old, callbacks=[probe])
    _assert_heads_continued(probe.state, obj["heads"]["s1"])


def test_finetune_refuses_a_different_s1_objective(s1_run, tiny_world, tmp_path):
    # the init encoder was pre-trained with SimSiam: S2's S1 term must not restart it
    with pytest.raises(ConfigError, match=r"s1\.method: simsiam.*lambda_s1: 0"):
        finetune(tiny_world, s2_config("infonce", epochs=1), tmp_path / "a", seed=0, init=s1_run)
    other = s2_config(epochs=1)
    other.s1.proj_dim = 64
    with pytest.raises(ConfigError, match=r"s1\.proj_dim: 32"):
        finetune(tiny_world, other, tmp_path / "b", seed=0, init=s1_run)
    # no S1 term, nothing to continue: fine
    finetune(tiny_world, s2_config("infonce", epochs=1, lambda_s1=0.0), tmp_path / "c", seed=0,
             init=s1_run)  # fmt: skip


BYOL_YAML = """
pretrain:
  epochs: 1
  batch_size: 64
  probe_items: 100
  objective: {method: byol, proj_dim: 32, pred_dim: 16, momentum: 0.9}
  encoder: {width: 8, stages: 2, blocks: 1, embed_dim: 16}
  trainer: {progress_bar: false, accelerator: cpu, checkpoint_every_n_steps: 2}
"""


@pytest.fixture(scope="module")
def byol_run(tiny_world_dir, tmp_path_factory):
    from click.testing import CliRunner

    from visctr.encoders.cli import pretrain as pretrain_cli

    tmp = tmp_path_factory.mktemp("byol")
    (tmp / "c.yaml").write_text(BYOL_YAML)
    args = [
        "--world",
        str(tiny_world_dir),
        "--out",
        str(tmp / "s1"),
        "--config",
        str(tmp / "c.yaml"),
    ]
    res = CliRunner().invoke(pretrain_cli, args)
    assert res.exit_code == 0, res.output
    return tmp / "s1" / "encoder.pt"


def test_byol_pretrain_from_the_cli_writes_a_loadable_encoder(byol_run):
    assert len(_history(byol_run)) == 1
    enc = load_encoder(byol_run)
    with torch.inference_mode():
        assert torch.isfinite(enc.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))).all()
    heads = torch.load(byol_run, weights_only=True)["heads"]
    assert heads["s1_spec"]["method"] == "byol" and heads["s1_spec"]["momentum"] == 0.9
    target = {k for k in heads["s1"] if k.startswith("target_encoder.")}
    assert {f"target_encoder.{k}" for k in enc.state_dict()} == target
    # the EMA target moved away from its copy of the initial encoder, but not onto the online one
    online = enc.state_dict()
    assert not all(torch.equal(heads["s1"][f"target_encoder.{k}"], v) for k, v in online.items())
    ckpt = torch.load(byol_run.parent / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("objective.target_encoder.") for k in ckpt["state_dict"])


def test_byol_killed_run_resumes_its_target(tiny_world, tmp_path):
    cfg = s1_config("byol", epochs=2)
    whole = pretrain(tiny_world, cfg, tmp_path / "a", seed=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tiny_world, cfg, tmp_path / "b", seed=0, callbacks=[_Crash(5)])
    resumed = pretrain(tiny_world, cfg, tmp_path / "b", seed=0)
    a, b = (torch.load(p, weights_only=True) for p in (whole, resumed))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["heads"]["s1"][k], b["heads"]["s1"][k]) for k in a["heads"]["s1"])


def test_finetune_continues_byol_heads_and_target(byol_run, tiny_world, tmp_path):
    probe = _HeadsAtStart()
    cfg = s2_config("byol", epochs=1)
    cfg.s1.momentum = 0.9
    out = finetune(tiny_world, cfg, tmp_path, seed=0, init=byol_run, callbacks=[probe])
    saved = torch.load(byol_run, weights_only=True)["heads"]["s1"]
    _assert_heads_continued(probe.state, saved)
    after = torch.load(out, weights_only=True)["heads"]["s1"]
    moved = [k for k in saved if k.startswith("target_encoder.") and "weight" in k]
    assert moved and not any(torch.equal(after[k], saved[k]) for k in moved)  # EMA ran in S2
    with pytest.raises(ConfigError, match=r"s1\.method: byol"):
        finetune(tiny_world, s2_config("simsiam", epochs=1), tmp_path / "x", seed=0, init=byol_run)


def test_embed_missing_encoder(tiny_world, tmp_path):
    with pytest.raises(InputError, match="nope.pt"):
        embed(tmp_path / "nope.pt", tiny_world, tmp_path)
