"""End to end on the tiny world: train with and without S3, evaluate, CLI, bad inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from visctr.ctr import CTRConfig, predict_ctr, train_ctr
from visctr.embeddings import read_embeddings, write_embeddings
from visctr.errors import ConfigError, InputError
from visctr.eval.cli import train_ctr_cmd
from visctr.eval.ctr import evaluate_ctr
from visctr.s3.artifact import apply_debias
from visctr.s3.config import DebiasConfig
from visctr.stagedir import finished
from visctr.train import TrainerConfig
from visctr.world import World


def fast_cfg(debias: bool = False, **kw) -> CTRConfig:
    return CTRConfig(
        batch_size=256,
        max_epochs=2,
        debias=DebiasConfig(enabled=debias),
        trainer=TrainerConfig(accelerator="cpu", progress_bar=False),
        **kw,
    )


@pytest.fixture(scope="module")
def plain_model(tiny_world, tiny_embeddings, tmp_path_factory) -> Path:
    return train_ctr(
        tiny_world, tiny_embeddings, tmp_path_factory.mktemp("ctr") / "plain", fast_cfg(), seed=0
    )


@pytest.fixture(scope="module")
def debias_model(tiny_world, tiny_embeddings, tiny_reference, tmp_path_factory) -> Path:
    return train_ctr(
        tiny_world,
        tiny_embeddings,
        tmp_path_factory.mktemp("ctr") / "debias",
        fast_cfg(debias=True),
        seed=0,
        reference=tiny_reference,
    )


@pytest.mark.parametrize("which", ["plain_model", "debias_model"])
def test_train_writes_artifacts_and_metrics_are_sane(which, request, tiny_world, tiny_embeddings):
    out = request.getfixturevalue(which)
    for name in ("model.pt", "feature_map.json", "history.json", "stage.json"):
        assert (out / name).is_file(), name
    assert (out / "debias.pt").is_file() == (which == "debias_model")
    assert not (out / "checkpoints").exists()
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["config"]["debias"]["enabled"] == (which == "debias_model")
    hist = json.loads((out / "history.json").read_text())
    assert 1 <= len(hist) <= 2 and all(math.isfinite(h["train_loss"]) for h in hist)
    if which == "debias_model":
        assert all(h["triplet_loss"] is not None for h in hist)
    done = finished(out)["summary"]
    assert done["best_val_auc"] == max(h["val_auc"] for h in hist)  # best epoch's weights kept
    m = evaluate_ctr(out, tiny_world, tiny_embeddings)
    assert set(m) == {"auc", "logloss", "gauc", "auc_random_exposure", "auc_tail"}
    for k, v in m.items():
        assert math.isfinite(v), k
        assert (0 < v < 5) if k == "logloss" else (0 <= v <= 1), k
    assert m["auc"] > 0.6  # query-item cosine is informative in the fixture


def test_compiled_training_gives_the_same_model_format(
    plain_model, tiny_world, tiny_embeddings, tmp_path
):
    out = train_ctr(tiny_world, tiny_embeddings, tmp_path / "c", fast_cfg(compile=True), seed=0)
    eager = torch.load(plain_model / "model.pt", weights_only=True)["state_dict"]
    compiled = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert compiled.keys() == eager.keys()
    assert all(compiled[k].shape == eager[k].shape for k in eager)
    m = evaluate_ctr(out, tiny_world, tiny_embeddings)
    assert all(math.isfinite(v) for v in m.values()) and m["auc"] > 0.6


def test_compiled_module_pickles_after_compiling(tiny_world, tiny_embeddings):
    import pickle

    from visctr.ctr.batch import N_EXTRA, Batch
    from visctr.ctr.model import build_ctr_net
    from visctr.ctr.stats import compute_train_stats
    from visctr.ctr.trainer import CTRModule
    from visctr.ctr.visual import load_embeddings

    cfg = fast_cfg(compile=True)
    emb = load_embeddings(tiny_embeddings, tiny_world)
    stats = compute_train_stats(tiny_world, emb, cfg)
    net = build_ctr_net(cfg, stats.feature_map, stats.affinity)
    net.set_visual_tables(emb.item_vectors, emb.query_vectors)
    module = CTRModule(net, cfg, seed=0)
    x = Batch(
        torch.zeros(8, stats.feature_map.n_fields + N_EXTRA, dtype=torch.long), torch.zeros(8)
    )
    torch.testing.assert_close(module._train_forward(x), net(x))  # compiled == eager
    assert module._compiled is not None
    clone = pickle.loads(pickle.dumps(module))  # e.g. ddp_spawn ships the module
    assert clone._compiled is None
    torch.testing.assert_close(clone._train_forward(x), clone.net(x))


def test_old_model_format_is_a_clear_error(plain_model, tiny_world, tiny_embeddings, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(plain_model, old)
    blob = torch.load(old / "model.pt", weights_only=True)
    torch.save({**blob, "format": 1}, old / "model.pt")
    with pytest.raises(InputError, match="format 2 \\(found 1\\)"):
        evaluate_ctr(old, tiny_world, tiny_embeddings)


def test_compile_without_a_cpp_compiler_is_a_config_error(
    tiny_world, tiny_embeddings, tmp_path, monkeypatch
):
    monkeypatch.setattr("visctr.ctr.training._cpp_compiler", lambda: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        train_ctr(tiny_world, tiny_embeddings, tmp_path / "c", fast_cfg(compile=True), seed=0)
    assert not (tmp_path / "c").exists()


def test_random_exposure_by_category_matches_brute_force(plain_model, tiny_world, tiny_embeddings):
    from visctr.eval.ctr import random_exposure_by_category
    from visctr.metrics import auc

    pred = predict_ctr(plain_model, tiny_world, tiny_embeddings, "random")
    got = random_exposure_by_category(tiny_world, pred)
    items, queries = tiny_world.items, tiny_world.queries
    cat = dict(zip(items["item_id"].tolist(), items["category"].tolist(), strict=True))
    target = dict(
        zip(queries["query_id"].tolist(), queries["target_item_id"].tolist(), strict=True)
    )
    same = np.array(
        [
            cat[i] == cat[target[q]]
            for i, q in zip(pred["item_id"].tolist(), pred["query_id"].tolist(), strict=True)
        ]
    )
    y, p = pred["labels"], pred["probs"]
    assert got["random_same_category_share"] == pytest.approx(same.mean())
    assert got["random_same_category_click_share"] == pytest.approx(y[same].sum() / y.sum())
    for key, mask in (("auc_random_same_category", same), ("auc_random_other_category", ~same)):
        want = auc(y[mask], p[mask])
        assert (math.isnan(want) and math.isnan(got[key])) or got[key] == pytest.approx(want)
    full = evaluate_ctr(plain_model, tiny_world, tiny_embeddings, by_category=True)
    assert {k: full[k] for k in got} == pytest.approx(got, nan_ok=True)


def test_predict_covers_the_split_at_position_zero(plain_model, tiny_world, tiny_embeddings):
    logs = tiny_world.read_impressions("test")
    p = predict_ctr(plain_model, tiny_world, tiny_embeddings, "test")
    assert np.array_equal(p["item_id"], logs["item_id"])
    assert np.array_equal(p["query_id"], logs["query_id"])
    assert np.array_equal(p["labels"], logs["clicked"])
    assert ((p["probs"] > 0) & (p["probs"] < 1)).all()


def test_gate_output_differs_from_input(debias_model, tiny_embeddings):
    _, v = read_embeddings(tiny_embeddings / "items.parquet")
    fused = apply_debias(debias_model / "debias.pt", v)
    assert fused.shape == v.shape
    assert np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-5)
    assert np.abs(fused - v).max() > 1e-3


def test_finished_run_is_skipped_and_changed_config_retrains(
    plain_model, tiny_world, tiny_embeddings, tmp_path
):
    done = (plain_model / "stage.json").read_text()
    mtime = (plain_model / "model.pt").stat().st_mtime_ns
    train_ctr(tiny_world, tiny_embeddings, plain_model, fast_cfg(), seed=0)
    assert (plain_model / "model.pt").stat().st_mtime_ns == mtime
    assert (plain_model / "stage.json").read_text() == done
    # the same finished directory under a changed config is trained again, not reused
    out = tmp_path / "m"
    shutil.copytree(plain_model, out)
    before = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    train_ctr(tiny_world, tiny_embeddings, out, fast_cfg(lr=3e-2), seed=0)
    after = torch.load(out / "model.pt", weights_only=True)
    assert after["config"]["lr"] == 3e-2
    assert finished(out)["key"] != json.loads(done)["key"]
    assert not torch.equal(after["state_dict"]["deep_out.weight"], before["deep_out.weight"])


def test_embeddings_replaced_under_the_same_path_retrain(
    plain_model, tiny_world, tiny_embeddings, tmp_path
):
    """The run key follows the embeddings' content, not their path: a finished model is not
    reused (and its old metrics not reprinted) after the files are replaced."""
    emb = tmp_path / "emb"
    shutil.copytree(tiny_embeddings, emb)
    out = tmp_path / "m"
    train_ctr(tiny_world, emb, out, fast_cfg(), seed=0)
    first = finished(out)["key"]
    train_ctr(tiny_world, emb, out, fast_cfg(), seed=0)  # unchanged: skipped
    assert finished(out)["key"] == first
    ids, vecs = read_embeddings(emb / "items.parquet", "item_id")
    write_embeddings(ids, vecs[::-1].copy(), emb / "items.parquet", "item_id")
    before = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    train_ctr(tiny_world, emb, out, fast_cfg(), seed=0)
    assert finished(out)["key"] != first
    after = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert not torch.equal(before["deep_out.weight"], after["deep_out.weight"])


def test_cli_trains_and_prints_metrics(tiny_world_dir, tiny_embeddings, tmp_path, monkeypatch):
    cfg = tmp_path / "ctr.yaml"
    cfg.write_text("max_epochs: 1\nbatch_size: 512\ntrainer:\n  progress_bar: false\n")
    out = tmp_path / "m"
    inputs = ["--world", str(tiny_world_dir), "--embeddings", str(tiny_embeddings)]

    def cli(*args: str):
        return CliRunner().invoke(train_ctr_cmd, [*inputs, *args])

    r = cli("--out", str(out), "--config", str(cfg), "--accelerator", "cpu", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert "train-ctr:" in r.output and "auc_random_exposure=" in r.output
    cfg.write_text("max_epoch: 1\n")
    r = cli("--out", str(out), "--config", str(cfg))
    assert r.exit_code == 2 and "unknown key 'max_epoch'" in r.output
    r = cli("--out", str(tmp_path / "d"), "--debias")
    assert r.exit_code == 2 and "--reference" in r.output
    monkeypatch.setattr("visctr.ctr.training._cpp_compiler", lambda: None)  # --compile reaches it
    r = cli("--out", str(tmp_path / "c"), "--compile", "--accelerator", "cpu")
    assert r.exit_code == 2 and "C++ compiler" in r.output
    assert not (tmp_path / "c").exists()


# ---- bad input -------------------------------------------------------------------------


@pytest.fixture
def world_copy(tiny_world_dir, tmp_path) -> Path:
    dst = tmp_path / "world"
    shutil.copytree(tiny_world_dir, dst)
    return dst


def _emb_copy(src: Path, dst: Path, items=None, queries=None) -> Path:
    dst.mkdir(parents=True)
    for name, col, fn in (
        ("items.parquet", "item_id", items),
        ("queries.parquet", "query_id", queries),
    ):
        ids, v = read_embeddings(src / name, col)
        if fn is not None:
            ids, v = fn(ids, v.copy())
        write_embeddings(ids, v, dst / name, col)
    return dst


def _expect_error(world_dir: Path, emb: Path, tmp_path: Path, match: str, **kw) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match):
        train_ctr(World.load(world_dir), emb, out, fast_cfg(debias="reference" in kw), seed=0, **kw)
    assert not out.exists()  # nothing written before the inputs are known to be good


def test_missing_item_vector(tiny_world, tiny_world_dir, tiny_embeddings, tmp_path):
    shown = tiny_world.read_impressions("train")["item_id"][0]
    emb = _emb_copy(
        tiny_embeddings, tmp_path / "e", items=lambda i, v: (i[i != shown], v[i != shown])
    )
    _expect_error(tiny_world_dir, emb, tmp_path, rf"items\.parquet: no vector for item_id {shown}")


def test_missing_query_vector(tiny_world, tiny_world_dir, tiny_embeddings, tmp_path):
    q = tiny_world.read_impressions("train")["query_id"][0]
    emb = _emb_copy(tiny_embeddings, tmp_path / "e", queries=lambda i, v: (i[i != q], v[i != q]))
    _expect_error(tiny_world_dir, emb, tmp_path, rf"queries\.parquet: no vector for query_id {q}")


def test_query_width_differs_from_items(tiny_world_dir, tiny_embeddings, tmp_path):
    emb = _emb_copy(
        tiny_embeddings, tmp_path / "e", queries=lambda i, v: (i, np.hstack([v, v[:, :1]]))
    )
    _expect_error(tiny_world_dir, emb, tmp_path, r"queries\.parquet: vectors have width 17")


def test_reference_width_differs(tiny_world_dir, tiny_embeddings, tmp_path):
    ref = _emb_copy(
        tiny_embeddings,
        tmp_path / "r",
        items=lambda i, v: (i, v[:, :8]),
        queries=lambda i, v: (i, v[:, :8]),
    )
    _expect_error(
        tiny_world_dir, tiny_embeddings, tmp_path, "reference vectors have width 8", reference=ref
    )


def test_nan_vector(tiny_world_dir, tiny_embeddings, tmp_path):
    def poison(i, v):
        v[3, 2] = np.nan
        return i, v

    emb = _emb_copy(tiny_embeddings, tmp_path / "e", items=poison)
    _expect_error(tiny_world_dir, emb, tmp_path, r"items\.parquet: row 3 .*NaN")


def test_logs_missing_a_column(world_copy, tiny_embeddings, tmp_path):
    p = world_copy / "impressions" / "train.parquet"
    pq.write_table(pq.read_table(p).drop_columns(["position"]), p)
    _expect_error(
        world_copy, tiny_embeddings, tmp_path, r"train\.parquet: missing column 'position'"
    )


def test_empty_train_split(world_copy, tiny_embeddings, tmp_path):
    p = world_copy / "impressions" / "train.parquet"
    t = pq.read_table(p)
    pq.write_table(t.slice(0, 0), p)
    _expect_error(world_copy, tiny_embeddings, tmp_path, "training split is empty")


def test_debias_without_reference(tiny_world, tiny_embeddings, tmp_path):
    with pytest.raises(InputError, match="reference"):
        train_ctr(tiny_world, tiny_embeddings, tmp_path / "o", fast_cfg(debias=True), seed=0)


def test_unknown_item_in_logs(world_copy, tiny_embeddings, tmp_path):
    p = world_copy / "impressions" / "train.parquet"
    t = pq.read_table(p)
    ids = t.column("item_id").to_numpy().copy()
    ids[5] = 10**9
    t = t.set_column(t.schema.get_field_index("item_id"), "item_id", pa.array(ids, pa.int64()))
    pq.write_table(t, p)
    _expect_error(world_copy, tiny_embeddings, tmp_path, "item_id 1000000000 is not in the world")


def _edit_column(world_dir: Path, split: str, name: str, edit) -> None:
    p = world_dir / "impressions" / f"{split}.parquet"
    t = pq.read_table(p)
    i = t.schema.get_field_index(name)
    t = t.set_column(i, name, edit(t.column(name).combine_chunks(), t.schema.field(i).type))
    pq.write_table(t, p)


def _with_null(arr, typ):
    vals = arr.to_pylist()
    vals[7] = None
    return pa.array(vals, typ)


def test_logs_with_null_values(world_copy, tiny_embeddings, tmp_path):
    _edit_column(world_copy, "train", "clicked", _with_null)
    _expect_error(
        world_copy, tiny_embeddings, tmp_path, r"train\.parquet: column 'clicked' has 1 null"
    )


def test_logs_with_nan_in_a_float_column(world_copy, tiny_embeddings, tmp_path):
    def as_float_nan(arr, _):
        v = arr.to_numpy().astype(np.float64)
        v[3] = np.nan
        return pa.array(v)

    _edit_column(world_copy, "train", "position", as_float_nan)
    _expect_error(
        world_copy, tiny_embeddings, tmp_path, r"train\.parquet: column 'position' has type double"
    )


def test_negative_positions(world_copy, tiny_embeddings, tmp_path):
    _edit_column(world_copy, "train", "position", lambda a, t: pa.array(np.asarray(a) - 5, t))
    _expect_error(world_copy, tiny_embeddings, tmp_path, r"'position' has negative values")


def test_clicked_not_binary(world_copy, tiny_embeddings, tmp_path):
    def two(a, t):
        v = np.asarray(a).copy()
        v[0] = 2
        return pa.array(v, t)

    _edit_column(world_copy, "train", "clicked", two)
    _expect_error(world_copy, tiny_embeddings, tmp_path, r"'clicked' must be 0 or 1, found 2")


def test_bad_test_split_is_an_error_at_evaluation(plain_model, world_copy, tiny_embeddings):
    _edit_column(world_copy, "test", "clicked", _with_null)
    with pytest.raises(InputError, match=r"test\.parquet: column 'clicked' has 1 null"):
        evaluate_ctr(plain_model, World.load(world_copy), tiny_embeddings)


def test_cli_bad_logs_one_line_exit_2(world_copy, tiny_embeddings, tmp_path):
    _edit_column(world_copy, "train", "clicked", _with_null)
    out = tmp_path / "m"
    args = ["--world", str(world_copy), "--embeddings", str(tiny_embeddings), "--out", str(out)]
    r = CliRunner().invoke(train_ctr_cmd, [*args, "--accelerator", "cpu"])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'clicked'" in lines[0]
    assert "Traceback" not in r.output and not out.exists()


def test_s3_with_disagreement_alignment_and_relational_terms_trains(
    tiny_world, tiny_embeddings, tiny_reference, tmp_path
):
    dcfg = DebiasConfig(enabled=True, negatives="disagreement", remine_every=5, align="mmd",
                        align_batch=32, relational_weight=0.5)  # fmt: skip
    cfg = fast_cfg()
    cfg.debias = dcfg
    out = train_ctr(tiny_world, tiny_embeddings, tmp_path / "s3", cfg, seed=0,
                    reference=tiny_reference)  # fmt: skip
    hist = json.loads((out / "history.json").read_text())
    for h in hist:  # every term logged per epoch, the share of active triplets a share
        for k in ("triplet_loss", "align_loss", "relational_loss"):
            assert math.isfinite(h[k]) and h[k] >= 0, k
        assert 0 <= h["triplet_active"] <= 1
    assert hist[0]["triplet_active"] > 0  # mined triplets are violated or within the margin
    assert (out / "debias.pt").is_file()


def test_the_head_alone_needs_no_reference(tiny_world, tiny_embeddings, tmp_path):
    cfg = fast_cfg()
    cfg.debias = DebiasConfig(enabled=True, weight=0.0)
    out = train_ctr(tiny_world, tiny_embeddings, tmp_path / "h", cfg, seed=0)
    hist = json.loads((out / "history.json").read_text())
    assert "triplet_loss" not in hist[0] and (out / "debias.pt").is_file()
    with pytest.raises(InputError, match="reference"):  # the triplet term does need it
        cfg.debias = DebiasConfig(enabled=True)
        train_ctr(tiny_world, tiny_embeddings, tmp_path / "d", cfg, seed=0)


def test_the_exposure_aware_gate_trains_and_serves_by_id(tiny_world, tiny_embeddings, tmp_path):
    from visctr.ctr.training import load_model
    from visctr.s3.artifact import debias_transform

    cfg = fast_cfg()
    cfg.debias = DebiasConfig(enabled=True, weight=0.0, gate_exposure=True)
    out = train_ctr(tiny_world, tiny_embeddings, tmp_path / "gx", cfg, seed=0)
    net, _ = load_model(out, tiny_world, tiny_embeddings)
    assert float(net.debias.exposure.weight.abs().max()) > 0  # the click loss trained it
    t = debias_transform(out / "debias.pt")
    ids = np.asarray(tiny_world.items["item_id"])
    np.testing.assert_array_equal(t.table.lookup(ids), net.item_buckets.numpy())
    with pytest.raises(InputError, match="gate reads exposure"):
        apply_debias(out / "debias.pt", net.item_vectors.numpy())
    m = evaluate_ctr(out, tiny_world, tiny_embeddings)
    assert 0.0 <= m["auc"] <= 1.0
