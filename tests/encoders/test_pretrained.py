"""Backbones from the ecosystem (torchvision:<name>, timm:<name>) with pretrained weights
from a local file: loaded bit-exact, kept by training at lr ~ 0, served by the export
exactly as embedded, and a file that does not fit refused in one line naming it."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from visctr.cli import main
from visctr.encoders import EncoderConfig, build_encoder, load_encoder
from visctr.encoders.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from visctr.errors import InputError


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """A random-init torchvision resnet18 (its classifier included) saved as a .pth."""
    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(net.state_dict(), path)
    return net, path


def _cfg(weights, backbone="torchvision:resnet18", embed_dim=16) -> EncoderConfig:
    return EncoderConfig(backbone=backbone, embed_dim=embed_dim, weights=str(weights))


def test_torchvision_weights_load_bit_exact_and_the_classifier_is_dropped(r18):
    net, path = r18
    enc = build_encoder(_cfg(path), 1, 28)
    got = enc.backbone.state_dict()
    compared = 0
    for k, v in net.state_dict().items():
        if k.startswith("fc."):
            assert k not in got
            continue
        assert torch.equal(got[k], v), k
        compared += 1
    assert compared == len(got) and enc.backbone.out_dim == 512
    assert enc.mean == IMAGENET_MEAN and enc.std == IMAGENET_STD and enc.channels == 3
    # a grey image goes in as RGB, normalised with ImageNet's statistics per channel
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    rgb = (x.float() / 255).expand(-1, 3, -1, -1)
    norm = (rgb - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None
    ]
    enc.eval()
    torch.testing.assert_close(enc.backbone(norm), enc.backbone(enc.prepare(x)), atol=0, rtol=0)


def test_timm_vit_weights_load_from_safetensors(tmp_path):
    timm = pytest.importorskip("timm")
    save_file = pytest.importorskip("safetensors.torch").save_file
    torch.manual_seed(2)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32).eval()
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    enc = build_encoder(_cfg(path, "timm:vit_tiny_patch16_224", None), 3, 32).eval()
    got = enc.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items() if k in got)
    assert {k for k in src.state_dict() if k not in got} == {"head.weight", "head.bias"}
    src.reset_classifier(0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.backbone(x), src(x), atol=0, rtol=0)
    assert enc.embed_dim == 192 and enc.mean == tuple(src.pretrained_cfg["mean"])


def _renamed(state):
    state = dict(state)
    state["layer9.weight"] = state.pop("layer1.0.conv1.weight")
    return state


def _reshaped(state):
    state = dict(state)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    return state


@pytest.mark.parametrize(
    "write,says",
    [
        (lambda s, p: torch.save(_renamed(s), p), "missing tensor 'layer1.0.conv1.weight'"),
        (
            lambda s, p: torch.save({**s, "extra.bias": torch.zeros(3)}, p),
            "unexpected tensor 'extra.bias'",
        ),
        (
            lambda s, p: torch.save(_reshaped(s), p),
            "tensor 'layer1.0.conv1.weight' has shape [64, 64, 1, 1], expected [64, 64, 3, 3]",
        ),
        (lambda s, p: torch.save([1, 2, 3], p), "holds no state dict"),
        (lambda s, p: p.write_bytes(b"not a checkpoint"), "not a loadable checkpoint"),
        (lambda s, p: None, "encoder.weights file not found"),
    ],
)
def test_a_weights_file_that_does_not_fit_is_one_line_naming_it(r18, tmp_path, write, says):
    net, _ = r18
    path = tmp_path / "bad.pth"
    write(net.state_dict(), path)
    with pytest.raises(InputError) as e:
        build_encoder(_cfg(path), 1, 28)
    msg = str(e.value)
    assert str(path) in msg and says in msg and "\n" not in msg, msg


def test_weights_by_torchvision_name_come_from_the_cache_only(r18, tmp_path, monkeypatch):
    net, path = r18
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(InputError, match="is not in torch's cache, and visctr downloads nothing"):
        build_encoder(_cfg("IMAGENET1K_V1"), 3, 64)
    with pytest.raises(InputError, match="has no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        build_encoder(_cfg("IMAGENET9K"), 3, 64)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    enc = build_encoder(_cfg("IMAGENET1K_V1"), 3, 64)
    assert torch.equal(enc.backbone.conv1.weight, net.conv1.weight)
    with pytest.raises(InputError, match="names torchvision weights"):
        build_encoder(_cfg("IMAGENET1K_V1", "resnet18"), 3, 64)


def test_unknown_models_are_config_errors():
    with pytest.raises(ValueError, match="torchvision has no classification model 'resnet7'"):
        build_backbone("torchvision:resnet7", 3, 64)
    with pytest.raises(ValueError, match="unknown backbone 'torchvision:../x'"):
        EncoderConfig(backbone="torchvision:../x")
    with pytest.raises(ValueError, match="unknown option"):
        build_backbone("torchvision:resnet18", 3, 64, small_stem=True)


PRETRAIN = """
pretrain:
  epochs: 1
  batch_size: 32
  lr: 1.0e-12
  weight_decay: 0.0
  probe_items: 0
  encoder: {{backbone: "torchvision:resnet18", embed_dim: 16, weights: "{weights}"}}
trainer:
  progress_bar: false
"""


@pytest.mark.slow
def test_pretrain_keeps_the_weights_and_the_export_serves_what_embed_wrote(
    r18, tiny_world_dir, tmp_path
):
    """A 1-epoch pretrain at lr ~ 0 keeps the loaded weights; embed -> export -> search
    give the same vectors (the export's encoder on the item photos = the embeddings
    file, max |d| <= 1e-5) and an item's own photo finds it."""
    from visctr.embeddings import align, read_embeddings
    from visctr.world import World

    net, path = r18
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(PRETRAIN.format(weights=path))
    w = str(tiny_world_dir)
    run = CliRunner().invoke

    def ok(args):
        res = run(main, args)
        assert res.exit_code == 0, res.output + repr(res.exception)
        return res

    ok(["pretrain", "--world", w, "--config", str(cfg), "--out", str(tmp_path / "s1")])
    enc = load_encoder(tmp_path / "s1" / "encoder.pt")
    params = dict(enc.backbone.named_parameters())
    for k, v in net.named_parameters():
        if not k.startswith("fc."):
            torch.testing.assert_close(params[k], v, atol=1e-6, rtol=0)
    spec = torch.load(tmp_path / "s1" / "encoder.pt", weights_only=True)["config"]
    assert spec["backbone"] == "torchvision:resnet18" and tuple(spec["mean"]) == IMAGENET_MEAN
    enc_file = str(tmp_path / "s1" / "encoder.pt")
    ok(["embed", "--world", w, "--encoder", enc_file, "--out", str(tmp_path / "emb")])
    ok(["export", "--encoder", enc_file, "--embeddings", str(tmp_path / "emb"), "--index",
        "flat", "--out", str(tmp_path / "export")])  # fmt: skip
    world = World.load(tiny_world_dir)
    ids, vectors = read_embeddings(tmp_path / "emb" / "items.parquet", "item_id")
    vectors = align(ids, vectors, np.asarray(world.items["item_id"]), "items.parquet")
    rows = np.asarray(world.items["image_row"])[:64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        ts = torch.jit.load(str(tmp_path / "export" / "encoder.ts"))
    with torch.no_grad():
        served = ts(torch.from_numpy(np.asarray(world.item_images[rows]))).numpy()
    assert np.abs(served - vectors[:64]).max() <= 1e-5
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[rows[7], 0])).save(png)
    res = ok(["search", "--export", str(tmp_path / "export"), "--image", str(png), "--top-k", "3"])
    assert f"item {world.items['item_id'][7]}" in res.output.splitlines()[0]
    # and ONNX, where its packages are installed (the interop extra)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ok(["export", "--encoder", enc_file, "--embeddings", str(tmp_path / "emb"), "--index",
        "flat", "--onnx", "--out", str(tmp_path / "onnx")])  # fmt: skip
    sess = ort.InferenceSession(
        str(tmp_path / "onnx" / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    images = np.asarray(world.item_images[rows]).astype(np.float32) / 255.0
    got = sess.run(None, {"images": images})[0]
    assert np.abs(got - vectors[:64]).max() <= 1e-5


def _rgb_catalog(root, n_per_class: int = 40, classes: int = 5):
    """RGB JPEGs of 64 px: per class a coloured shape on a textured background."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[:64, :64]
    for c in range(classes):
        colour = rng.integers(40, 255, 3)
        for i in range(n_per_class):
            img = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
            r = 10 + 3 * c + rng.integers(0, 6)
            cy, cx = rng.integers(20, 44, 2)
            mask = (
                (np.abs(yy - cy) + np.abs(xx - cx) < r)
                if c % 2
                else ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
            )
            img[mask] = np.clip(colour + rng.integers(-20, 20, 3), 0, 255)
            rel = f"img/{c}_{i}.jpg"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / rel, quality=90)
            rows.append(f"sku-{c}-{i},{rel},cat{c}")
    (root / "catalog.csv").write_text("item_id,image_path,category\n" + "\n".join(rows) + "\n")
    return root / "catalog.csv"


RUN = """
world:
  catalog: {{source: "{catalog}", image_size: 32, channels: 3, max_items: null}}
  n_users: 40
  n_queries: 300
  n_random_queries: 100
  n_retrieval_queries: 100
  extra_retrieval_queries: 0
abtest: {{queries: 100}}
s1: {{batch_size: 32, probe_items: 50, encoder: {enc}}}
s2: {{batch_size: 32, probe_items: 50, encoder: {enc}}}
classify: {{batch_size: 32, probe_items: 50, encoder: {enc}}}
"""


@pytest.mark.slow
def test_an_rgb_jpeg_catalog_runs_end_to_end_on_a_torchvision_resnet(r18, tmp_path):
    """`visctr run --preset tiny` over RGB JPEGs (64 px, read at 32) with
    torchvision:resnet18 started from a local weights file: every method is measured."""
    _, weights = r18
    catalog = _rgb_catalog(tmp_path / "shop")
    enc = f'{{backbone: "torchvision:resnet18", embed_dim: 32, weights: "{weights}"}}'
    cfg = tmp_path / "run.yaml"
    cfg.write_text(RUN.format(catalog=catalog, enc=enc))
    res = CliRunner().invoke(
        main,
        ["run", "--preset", "tiny", "--config", str(cfg), "--seeds", "1", "--out",
         str(tmp_path / "run")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    from visctr.pipeline.methods import METHODS

    assert set(r["methods"]) == set(METHODS)
    for m, metrics in r["methods"].items():
        hr = metrics["hr@10"]["per_seed"][0]
        assert hr is not None and 0 <= hr <= 1, m
    spec = torch.load(
        tmp_path / "run" / "seed_0" / "encoders" / "s1" / "encoder.pt", weights_only=True
    )["config"]
    assert spec["backbone"] == "torchvision:resnet18" and spec["in_channels"] == 3


def test_the_photo_config_resolves():
    from pathlib import Path

    cfg = Path(__file__).parents[2] / "configs" / "photo-224.yaml"
    res = CliRunner().invoke(main, ["config", "show", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert res.output.count("backbone: torchvision:resnet50") == 3
    assert "image_size: 224" in res.output and "weights: IMAGENET1K_V2" in res.output


def test_a_timm_vit_exports_and_searches_what_it_embeds(tmp_path):
    """A timm ViT from a safetensors file: its vectors, ``encoder.ts`` and ``encoder.onnx``
    of the export agree (max |d| <= 1e-5) and ``visctr search`` finds an item by its own
    photo."""
    timm = pytest.importorskip("timm")
    save_file = pytest.importorskip("safetensors.torch").save_file
    from visctr.embeddings import write_embeddings
    from visctr.encoders.checkpoint import encoder_spec, save_encoder
    from visctr.encoders.export import embed_images
    from visctr.serve.export import IndexConfig, export_artifacts, search_image

    torch.manual_seed(3)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    cfg = _cfg(weights, "timm:vit_tiny_patch16_224", 16)
    enc = build_encoder(cfg, 3, 32).eval()
    save_encoder(tmp_path / "encoder.pt", enc, encoder_spec(enc, cfg, 3, 32))
    enc = load_encoder(tmp_path / "encoder.pt").eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    images[:, :, 8:24, 8:24] = rng.integers(0, 256, (40, 3, 1, 1))  # a coloured square each
    with torch.no_grad():
        vectors = np.concatenate(
            list(embed_images(enc, images, np.arange(40), 16, torch.device("cpu")))
        )
    ids = np.arange(100, 140, dtype=np.int64)
    write_embeddings(ids, vectors, tmp_path / "emb" / "items.parquet")
    out = export_artifacts(
        tmp_path / "encoder.pt", tmp_path / "emb", tmp_path / "x", IndexConfig(kind="flat"),
        onnx=importlib.util.find_spec("onnxscript") is not None,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(out / "encoder.ts"))
    with torch.no_grad():
        served = ts(torch.from_numpy(images)).numpy()
    assert np.abs(served - vectors).max() <= 1e-5
    png = tmp_path / "q.png"
    Image.fromarray(images[7].transpose(1, 2, 0)).save(png)
    assert search_image(out, png, k=1)[0][0] == 107
    if (out / "encoder.onnx").is_file():
        ort = pytest.importorskip("onnxruntime")
        sess = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": images.astype(np.float32) / 255.0})[0]
        assert np.abs(got - vectors).max() <= 1e-5


@pytest.mark.slow
def test_pretrain_keeps_a_timm_vits_weights(tiny_world_dir, tmp_path):
    """A timm ViT from a safetensors file through a 1-epoch ``visctr pretrain`` at lr ~ 0
    (the grey 28 px tiny world, repeated to RGB): every backbone tensor comes out as it
    went in, so the file's weights are what training starts from."""
    timm = pytest.importorskip("timm")
    save_file = pytest.importorskip("safetensors.torch").save_file

    torch.manual_seed(5)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, num_classes=0)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        PRETRAIN.format(weights=weights).replace(
            "torchvision:resnet18", "timm:vit_tiny_patch16_224"
        )
    )
    res = CliRunner().invoke(
        main,
        ["pretrain", "--world", str(tiny_world_dir), "--config", str(cfg), "--out", str(tmp_path / "s1")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    enc = load_encoder(tmp_path / "s1" / "encoder.pt")
    assert torch.load(tmp_path / "s1" / "encoder.pt", weights_only=True)["config"]["backbone"] == (
        "timm:vit_tiny_patch16_224"
    )
    got = enc.backbone.state_dict()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0, msg=k)
