from __future__ import annotations

import pytest
import torch
from torch import nn

from visctr.encoders import Encoder, EncoderConfig, build_backbone, build_encoder


@pytest.mark.parametrize(
    "name,kw,dim",
    [
        ("convnet", {}, 64),
        ("convnet", {"width": 8, "stages": 2, "blocks": 1}, 16),
        ("resnet18", {"small_stem": True}, 512),
    ],
)
def test_backbone_shapes(name, kw, dim):
    torch.manual_seed(0)
    net = build_backbone(name, 1, 28, **kw)
    assert net.out_dim == dim
    out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, dim)


def test_resnet50_and_stems():
    net = build_backbone("resnet50", 3, 224, small_stem=False)
    assert net.out_dim == 2048
    assert net.conv1.kernel_size == (7, 7)
    small = build_backbone("resnet18", 1, 28)  # small images default to the small stem
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)


def test_unknown_backbone_and_option():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vit", 1, 28)
    with pytest.raises(ValueError, match="unknown option"):
        build_backbone("convnet", 1, 28, small_stem=True)


def test_encoder_uint8_equals_float_and_encode_is_normalised():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(embed_dim=32), 1, 28).eval()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        a = enc(x)
        b = enc(x.float() / 255)
        z = enc.encode(x)
    assert a.shape == (4, 32)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))


def test_encoder_wraps_any_module():
    class Tiny(nn.Module):
        out_dim = 5

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(28 * 28, 5)

        def forward(self, x):
            return self.lin(x.flatten(1))

    enc = Encoder(Tiny(), embed_dim=None)
    assert enc.embed_dim == 5
    assert enc.encode(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    with pytest.raises(ValueError, match="out_dim"):
        Encoder(nn.Linear(3, 3))


@pytest.mark.parametrize("backbone", ["convnet", "resnet18"])
def test_encoder_runs_channels_last_and_computes_the_same_function(backbone):
    """Weights and input batches are NHWC by default (the fast CPU/cuDNN layout); NCHW gives
    the same embeddings up to float summation order, and the saved weights load into
    either."""
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(backbone=backbone), 3, 28).eval()  # 1 channel: no layout
    convs = [m.weight for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    seen = []
    hook = next(m for m in enc.modules() if isinstance(m, nn.Conv2d)).register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    x = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        fast = enc(x)
        hook.remove()
        ref = build_encoder(EncoderConfig(backbone=backbone), 3, 28).eval()
        ref.set_memory_format(torch.contiguous_format)
        ref.load_state_dict(enc.state_dict())
        slow = ref(x)
    assert seen == [True]
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="memory_format"):
        enc.set_memory_format(torch.preserve_format)
