"""Serving export: the TorchScript encoder reproduces the PyTorch embeddings, and search
with only the export folder finds an item from its own photo."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from visctr.cli import main
from visctr.encoders import EncoderConfig, build_encoder, embed, load_encoder
from visctr.encoders.checkpoint import encoder_spec, save_encoder
from visctr.serve.export import IndexConfig, build_index, export_artifacts, search_image
from visctr.world import World


@pytest.fixture(scope="module")
def encoder_and_embeddings(tiny_world_dir, tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("enc")
    cfg = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=16)
    enc = build_encoder(cfg, 1, 28).eval()
    save_encoder(d / "encoder.pt", enc, encoder_spec(enc, cfg, 1, 28))
    world = World.load(tiny_world_dir)
    embed(d / "encoder.pt", world, d / "emb", device="cpu")
    return d / "encoder.pt", d / "emb", world


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_export_reproduces_embeddings_and_searches(encoder_and_embeddings, tmp_path, kind):
    enc_path, emb_dir, world = encoder_and_embeddings
    out = export_artifacts(enc_path, emb_dir, tmp_path / "export", IndexConfig(kind=kind, nlist=8))
    ts = torch.jit.load(str(out / "encoder.ts"))
    images = torch.from_numpy(np.asarray(world.item_images[:32]))
    ref = torch.nn.functional.normalize(load_encoder(enc_path)(images), dim=1)
    torch.testing.assert_close(ts(images), ref, atol=1e-5, rtol=1e-4)
    # an item's own photo finds itself (flat is exact; the approximate indexes nearly so)
    row = 5
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[row, 0])).save(png)
    hits = search_image(out, png, k=10)
    assert len(hits) == 10
    assert world.items["item_id"][row] in [i for i, _ in hits]
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)


def test_cli_export_and_search(encoder_and_embeddings, tmp_path):
    enc_path, emb_dir, world = encoder_and_embeddings
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--encoder",
            str(enc_path),
            "--embeddings",
            str(emb_dir),
            "--index",
            "flat",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 0, res.output
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[3, 0])).save(png)
    res = CliRunner().invoke(
        main, ["search", "--export", str(tmp_path / "e"), "--image", str(png), "--top-k", "3"]
    )
    assert res.exit_code == 0, res.output
    assert f"item {world.items['item_id'][3]}" in res.output.splitlines()[0]
    res = CliRunner().invoke(
        main, ["search", "--export", str(tmp_path / "missing"), "--image", str(png)]
    )
    assert res.exit_code == 2 and "export.json" in res.output


def test_build_index_matches_exact_on_easy_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("flat", "hnsw"):
        _, idx = build_index(x, IndexConfig(kind=kind)).search(x[:20], 1)
        assert (idx[:, 0] == np.arange(20)).mean() >= 0.95


def test_export_with_debias_serves_and_indexes_the_same_transform(encoder_and_embeddings, tmp_path):
    """``debias.ts`` (query side) is the function ``visctr evaluate --debias`` applies, and
    the index holds the item vectors through it."""
    import faiss

    from visctr.ctr import debias_transform
    from visctr.ctr.config import DebiasConfig
    from visctr.ctr.debias import DebiasHead, export_debias
    from visctr.embeddings import read_embeddings

    enc_path, emb_dir, _ = encoder_and_embeddings
    torch.manual_seed(0)
    head = DebiasHead(16, 8)
    torch.nn.init.normal_(head.net.fc2.weight)
    export_debias(head, DebiasConfig(hidden=8), 16, tmp_path / "debias.pt")
    out = export_artifacts(
        enc_path, emb_dir, tmp_path / "x", IndexConfig(kind="flat"), tmp_path / "debias.pt"
    )
    _, v = read_embeddings(emb_dir / "items.parquet")
    want = debias_transform(tmp_path / "debias.pt")(v)
    assert np.abs(want - v).max() > 1e-2  # the transform is not the identity
    with torch.no_grad():
        served = torch.jit.load(str(out / "debias.ts"))(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(served, want, atol=1e-5)
    index = faiss.read_index(str(out / "index.faiss"))
    np.testing.assert_allclose(index.reconstruct_n(0, len(v)), want, atol=1e-6)
