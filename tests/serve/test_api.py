"""The Python front door: ``import visctr`` is cheap and names every public piece;
``visctr.embed`` on a user's photos gives the vectors of ``visctr embed`` and of the exported
TorchScript encoder; the README's Python section and the docstring examples run."""

from __future__ import annotations

import dataclasses
import doctest
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visctr
from visctr.embeddings import read_embeddings
from visctr.errors import InputError
from visctr.serve.export import IndexConfig, _jit_load, export_artifacts, search_image

ROOT = Path(__file__).resolve().parents[2]


def test_import_visctr_loads_no_torch():
    code = "import sys, visctr; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_exported_name_resolves():
    for name in visctr.__all__:
        assert getattr(visctr, name) is not None, name
    assert visctr.S1Method.__module__ == "visctr.encoders.methods.s1"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        visctr.nope  # noqa: B018


@pytest.fixture(scope="module")
def exported(encoder_and_embeddings, tmp_path_factory):
    enc_path, emb_dir, world = encoder_and_embeddings
    out = tmp_path_factory.mktemp("api") / "export"
    return export_artifacts(enc_path, emb_dir, out, IndexConfig(kind="flat"))


def test_embed_photos_equals_visctr_embed_and_the_exported_encoder(
    encoder_and_embeddings, exported, tmp_path
):
    """The same catalog photos given as PNG files, PIL images, numpy arrays and uint8 or
    float tensors embed to the vectors ``visctr embed`` wrote for them, and to what the
    exported ``encoder.ts`` gives, to 1e-5."""
    enc_path, emb_dir, world = encoder_and_embeddings
    ids, written = read_embeddings(emb_dir / "items.parquet")
    rows = np.arange(6)
    pixels = np.asarray(world.item_images[world.items["image_row"][rows]])  # [6, 1, 28, 28]
    pngs = []
    for i, img in enumerate(pixels):
        pngs.append(tmp_path / f"p{i}.png")
        Image.fromarray(img[0]).save(pngs[-1])
    enc = visctr.load_encoder(enc_path)
    assert (enc.image_size, enc.in_channels) == (28, 1)
    with torch.no_grad():
        served = _jit_load(exported / "encoder.ts")(torch.from_numpy(pixels))
    inputs = {
        "paths": [str(p) for p in pngs],
        "pil": [Image.open(p) for p in pngs],
        "numpy HW": [img[0] for img in pixels],
        "numpy HWC": [img.transpose(1, 2, 0) for img in pixels],
        "tensor uint8": [torch.from_numpy(img) for img in pixels],
        "tensor float": [torch.from_numpy(img).float() / 255 for img in pixels],
    }
    for kind, photos in inputs.items():
        got = visctr.embed(enc_path if kind == "paths" else enc, photos, batch_size=4)
        assert got.shape == (6, enc.embed_dim) and got.dtype == np.float32, kind
        assert float(np.abs(got - written[rows]).max()) <= 1e-5, kind
        assert float(np.abs(got - served.numpy()).max()) <= 1e-5, kind
    one = visctr.embed(enc, pngs[0])  # a single photo: one row
    assert one.shape == (1, enc.embed_dim)


def test_embed_resizes_and_converts_as_search_does(encoder_and_embeddings, exported, tmp_path):
    """A large RGB photo is converted and resized by the same decoder as ``visctr search``:
    the API's vector finds the same item with the same score."""
    enc_path, emb_dir, world = encoder_and_embeddings
    ids, written = read_embeddings(emb_dir / "items.parquet")
    img = np.asarray(world.item_images[world.items["image_row"][3], 0])
    big = Image.fromarray(img).resize((90, 70)).convert("RGB")
    path = tmp_path / "big.jpg"
    big.save(path, quality=95)
    vec = visctr.embed(enc_path, [path])[0]
    scores = written @ vec
    best = int(np.argmax(scores))
    hit = search_image(exported, path, k=1)[0]
    assert hit[0] == int(ids[best]) and abs(hit[1] - float(scores[best])) < 1e-4


def test_embed_refuses_what_it_cannot_read(encoder_and_embeddings, tmp_path):
    enc_path, _, _ = encoder_and_embeddings
    enc = visctr.load_encoder(enc_path)
    with pytest.raises(InputError, match="image file not found"):
        visctr.embed(enc, [tmp_path / "missing.jpg"])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="bad.jpg"):
        visctr.embed(enc, [tmp_path / "bad.jpg"])
    with pytest.raises(InputError, match=r"images\[0\]: a tensor photo is uint8"):
        visctr.embed(enc, [torch.rand(1, 40, 40)])
    with pytest.raises(InputError, match=r"images\[1\]: an array photo is uint8"):
        visctr.embed(enc, [np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.float64)])
    with pytest.raises(InputError, match=r"images\[0\]: expected a file path"):
        visctr.embed(enc, [12])
    bare = visctr.Encoder(enc.backbone)  # built by hand: no recorded geometry
    with pytest.raises(InputError, match="does not record the photos"):
        visctr.embed(bare, [np.zeros((28, 28), np.uint8)])
    assert visctr.embed(enc, []).shape == (0, enc.embed_dim)


def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```python block"
    return "\n".join(blocks)


def test_readme_python_section_runs(tiny_run, tmp_path, monkeypatch, capsys):
    """The README's Python section, executed as written, on the tiny run's world. Its stage
    directories are copies of the tiny run's and its configs are the run's, so the stages
    are found up to date (visctr's stage cache) instead of trained again; its photos are
    catalog photos written as files."""
    import shutil

    from visctr.pipeline.config import resolve_run_config

    code = _readme_python()
    assert len(code.splitlines()) <= 20
    run, _ = tiny_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "worlds").mkdir()
    (tmp_path / "worlds" / "shop").symlink_to(run / "world" / "data")
    shutil.copytree(run / "seed_0" / "encoders" / "s1", tmp_path / "out" / "s1")
    shutil.copytree(run / "seed_0" / "encoders" / "s1_s2", tmp_path / "out" / "s2")
    world = visctr.World.load(run / "world" / "data")
    names = re.findall(r'"([\w/-]+\.(?:jpg|png))"', code)
    for i, name in enumerate(names):
        Image.fromarray(np.asarray(world.item_images[i, 0])).save(tmp_path / name)
    cfg = resolve_run_config("tiny")
    monkeypatch.setattr(visctr, "S1Config", lambda **kw: dataclasses.replace(cfg.s1, **kw))
    monkeypatch.setattr(visctr, "S2Config", lambda **kw: dataclasses.replace(cfg.s2, **kw))
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert capsys.readouterr().out.count("up to date") == 2  # nothing was trained again
    vectors = namespace["vectors"]
    assert vectors.shape == (len(names), namespace["encoder"].embed_dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


DOCTESTED = [
    "visctr.encoders.methods.s1",  # trains S1 on a plain DataLoader
    "visctr.encoders.checkpoint",  # the rest read a finished tiny run: run_dir
    "visctr.encoders.photos",
    "visctr.world.store",
    "visctr.s3.artifact",
    "visctr.encoders.stages",  # examples that train a stage are shown, not run (+SKIP):
    "visctr.ctr.training",  # the README's Python section runs those calls
    "visctr.pipeline.run",
]


def test_docstring_examples_run(tiny_run):
    """Every ``>>>`` example of the public functions, on the tiny run (its directory is the
    examples' ``run_dir``)."""
    import importlib

    run_dir, _ = tiny_run
    globs = {"visctr": visctr, "np": np, "Path": Path, "run_dir": run_dir}
    ran = 0
    for name in DOCTESTED:
        mod = importlib.import_module(name)
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        for test in finder.find(mod, globs=dict(globs)):
            runner.run(test)
        res = runner.summarize(verbose=False)
        assert res.failed == 0, name
        ran += res.attempted
    assert ran >= 15
