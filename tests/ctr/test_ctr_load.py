"""Loading a trained CTR model checks ``model.pt`` and ``feature_map.json`` before use:
planted or damaged files give one ``InputError`` line naming the file, never a traceback,
a silent wrong model or a huge allocation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from visctr.ctr import CTRConfig, train_ctr
from visctr.ctr.training import load_model
from visctr.errors import InputError
from visctr.train import TrainerConfig


@pytest.fixture(scope="module")
def trained(tiny_world, tiny_embeddings, tmp_path_factory) -> Path:
    cfg = CTRConfig(
        batch_size=512, max_epochs=1, trainer=TrainerConfig(accelerator="cpu", progress_bar=False)
    )
    return train_ctr(tiny_world, tiny_embeddings, tmp_path_factory.mktemp("ctr") / "m", cfg, 0)


def _edit_json(fn):
    def edit(data: dict) -> dict:
        data = json.loads(json.dumps(data))
        fn(data)
        return data

    return edit


def _set(key, value):
    return _edit_json(lambda d: d.__setitem__(key, value))


def _field(i, key, delta):
    return _edit_json(lambda d: d["fields"][i].__setitem__(key, d["fields"][i][key] + delta))


def _first(key, value):
    return _edit_json(lambda d: d[key].__setitem__(0, value))


# planted feature maps: (edit of the decoded JSON, or raw bytes) -> expected message part
FEATURE_MAPS = {
    "not-json": (b"{not json", "not JSON"),
    "not-utf8": (b"\xff\xfe{}", "not JSON"),
    "a-list": (b"[1, 2]", "expected a JSON object"),
    "deep": (b"[" * 100_000, "not JSON"),
    "version": (_set("version", 7), "version '7'"),
    "unknown-key": (_set("evil", 1), "unexpected field 'evil'"),
    "missing-key": (_edit_json(lambda d: d.pop("visual_dim")), "missing field 'visual_dim'"),
    "dim-zero": (_set("visual_dim", 0), "'visual_dim' = 0 is outside"),
    "dim-huge": (_set("visual_dim", 10**9), "'visual_dim'"),
    "dim-string": (_set("visual_dim", "16"), "'visual_dim' must be int"),
    "dim-bool": (_set("visual_dim", True), "'visual_dim' must be int"),
    "category-negative": (_first("item_category", -1), "'item_category' holds -1"),
    "category-too-big": (_first("item_category", 99), "'item_category' holds 99"),
    "pop-bucket-too-big": (_first("item_pop_bucket", 99), "'item_pop_bucket' holds 99"),
    "item-id-float": (_first("item_ids", 1.5), "'item_ids' must be a list of integers"),
    "item-id-huge": (_first("item_ids", 2**70), "'item_ids' must be a list of integers"),
    "item-id-repeated": (
        _edit_json(lambda d: d["item_ids"].__setitem__(1, d["item_ids"][0])),
        "'item_ids' repeats",
    ),
    "short-table": (
        _edit_json(lambda d: d["item_category"].pop()),
        "'item_category' has",
    ),
    "user-vocab": (_field(0, "vocab", 1000), "'fields[0].vocab'"),
    "offset": (_field(2, "offset", 1), "'fields[2].offset'"),
    "fields-reordered": (
        _edit_json(lambda d: d["fields"].reverse()),
        "'fields' must name user, hour",
    ),
    "edges-not-increasing": (_set("pop_edges", [4, 2]), "'pop_edges'"),
    "time-span": (_set("t_min", 10**12), "'t_min' is after 't_max'"),
}


def _copy(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m"
    shutil.copytree(trained, out)
    return out


def _one_line_error(model_dir, world, embeddings, name: str, part: str) -> None:
    with pytest.raises(InputError) as e:
        load_model(model_dir, world, embeddings)
    msg = str(e.value)
    assert msg.startswith(str(model_dir / name)), msg
    assert "\n" not in msg and len(msg) < 400, msg
    assert part in msg, msg


@pytest.mark.parametrize("case", list(FEATURE_MAPS))
def test_planted_feature_map_is_a_one_line_error(
    case, trained, tiny_world, tiny_embeddings, tmp_path
):
    out = _copy(trained, tmp_path)
    edit, part = FEATURE_MAPS[case]
    p = out / "feature_map.json"
    if isinstance(edit, bytes):
        p.write_bytes(edit)
    else:
        p.write_text(json.dumps(edit(json.loads(p.read_text()))))
    _one_line_error(out, tiny_world, tiny_embeddings, "feature_map.json", part)


def _blob(fn):
    def edit(blob: dict) -> object:
        blob = {**blob, "state_dict": dict(blob["state_dict"]), "config": dict(blob["config"])}
        return fn(blob)

    return edit


def _state(fn):
    return _blob(lambda b: (fn(b["state_dict"]), b)[1])


def _config(key, value):
    return _blob(lambda b: (b["config"].__setitem__(key, value), b)[1])


def _tensor(key, fn):
    return _state(lambda s: s.__setitem__(key, fn(s[key])))


MODELS = {
    "a-tensor": (_blob(lambda b: torch.zeros(3)), "not a visctr CTR model"),
    "extra-key": (_blob(lambda b: {**b, "evil": 1}), "unexpected field 'evil'"),
    "no-weights": (
        _blob(lambda b: {k: v for k, v in b.items() if k != "state_dict"}),
        "missing field 'state_dict'",
    ),  # fmt: skip
    "weights-not-a-dict": (_blob(lambda b: {**b, "state_dict": [1]}), "'state_dict' must be dict"),
    "seed-string": (_blob(lambda b: {**b, "seed": "0"}), "'seed' must be int"),
    "config-unknown-key": (_config("evil", 1), "unknown key 'evil'"),
    "config-bad-value": (_config("mlp", [-1]), "mlp sizes must be >= 1"),
    "config-unknown-arch": (_config("arch", "nope"), "unknown architecture 'nope'"),
    "config-huge-mlp": (_config("mlp", [10**9, 10**9]), "has shape"),  # no allocation first
    "missing-tensor": (_state(lambda s: s.pop("deep_out.bias")), "missing tensor 'deep_out.bias'"),
    "extra-tensor": (
        _state(lambda s: s.__setitem__("evil", torch.zeros(1))),
        "unexpected tensor 'evil'",
    ),  # fmt: skip
    "wrong-shape": (
        _tensor("deep_out.weight", lambda t: torch.zeros(1, 3)),
        "'deep_out.weight' has shape [1, 3]",
    ),  # fmt: skip
    "nan-weight": (
        _tensor("deep_out.bias", lambda t: torch.full_like(t, float("nan"))),
        "'deep_out.bias' is not finite",
    ),  # fmt: skip
    "int-weight": (
        _tensor("deep_out.bias", lambda t: t.long()),
        "'deep_out.bias' is not finite floating",
    ),  # fmt: skip
    "affinity-rows": (_tensor("user_affinity", lambda t: t[:-1]), "'user_affinity' has shape"),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_planted_model_file_is_a_one_line_error(
    case, trained, tiny_world, tiny_embeddings, tmp_path
):
    out = _copy(trained, tmp_path)
    edit, part = MODELS[case]
    torch.save(edit(torch.load(out / "model.pt", weights_only=True)), out / "model.pt")
    _one_line_error(out, tiny_world, tiny_embeddings, "model.pt", part)


def test_a_valid_model_loads_unchanged(trained, tiny_world, tiny_embeddings):
    """The checks accept what training writes (and the loaded weights are the saved ones)."""
    net, _ = load_model(trained, tiny_world, tiny_embeddings)
    saved = torch.load(trained / "model.pt", weights_only=True)["state_dict"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k
