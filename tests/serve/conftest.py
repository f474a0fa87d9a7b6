"""Fixtures of the serving tests: a small untrained encoder saved as ``encoder.pt`` and the
tiny world's embeddings made with it."""

import pytest
import torch

from visctr.encoders import EncoderConfig, build_encoder, embed
from visctr.encoders.checkpoint import encoder_spec, save_encoder
from visctr.world import World


@pytest.fixture(scope="session")
def encoder_and_embeddings(tiny_world_dir, tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("enc")
    cfg = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=16)
    enc = build_encoder(cfg, 1, 28).eval()
    save_encoder(d / "encoder.pt", enc, encoder_spec(enc, cfg, 1, 28))
    world = World.load(tiny_world_dir)
    embed(d / "encoder.pt", world, d / "emb", device="cpu")
    return d / "encoder.pt", d / "emb", world
