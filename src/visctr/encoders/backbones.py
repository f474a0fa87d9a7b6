"""Image backbones and the :class:`Encoder` wrapper every stage trains.

A backbone maps ``[B, C, H, W]`` float images to ``[B, out_dim]`` features. The
:class:`Encoder` adds fixed input normalisation and an optional linear projection to
``embed_dim``; its output is *the* embedding that S1, S2 and ResNet-C train and that
``embed`` exports (L2-normalised by :meth:`Encoder.encode`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("convnet", "resnet18", "resnet50")


class ConvNet(nn.Module):
    """A small CPU-friendly CNN for small images (28×28 and similar).

    Stages of ``blocks`` 3×3 conv-BN-ReLU layers; widths double per stage and every
    stage but the last halves the resolution; global average pooling at the end.
    """

    def __init__(
        self, in_channels: int = 1, width: int = 16, stages: int = 3, blocks: int = 2
    ) -> None:
        super().__init__()
        if width < 1 or stages < 1 or blocks < 1:
            raise ValueError(
                f"convnet: width, stages, blocks must be >= 1, got {width}, {stages}, {blocks}"
            )
        layers: list[nn.Module] = []
        c_in = in_channels
        for s in range(stages):
            c_out = width * 2**s
            for _ in range(blocks):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
            if s < stages - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def _torchvision_resnet(name: str, in_channels: int, small_stem: bool) -> tuple[nn.Module, int]:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    if small_stem:
        # For small images: a 3x3 stride-1 stem and no max-pool keep spatial detail.
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net, out_dim


def build_backbone(name: str, in_channels: int, image_size: int, **kw: Any) -> nn.Module:
    """Build backbone ``name`` (``convnet`` | ``resnet18`` | ``resnet50``); has ``out_dim``.

    ``convnet`` takes ``width``, ``stages``, ``blocks``; the resnets take ``small_stem``
    (3×3 stride-1 stem, no max-pool; the default for images under 64 px).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if name == "convnet":
        unknown = set(kw) - {"width", "stages", "blocks"}
        if unknown:
            raise ValueError(f"convnet: unknown option(s) {sorted(unknown)}")
        return ConvNet(in_channels, **kw)
    if name in ("resnet18", "resnet50"):
        unknown = set(kw) - {"small_stem"}
        if unknown:
            raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}")
        small_stem = kw.get("small_stem")
        if small_stem is None:
            small_stem = image_size < 64
        net, out_dim = _torchvision_resnet(name, in_channels, bool(small_stem))
        net.out_dim = out_dim
        return net
    raise ValueError(f"unknown backbone {name!r} (choose one of {', '.join(BACKBONES)})")


class Encoder(nn.Module):
    """Backbone + optional linear projection to ``embed_dim``.

    Accepts uint8 images (scaled to [0, 1]) or floats already in [0, 1]; normalises them
    with a fixed ``mean``/``std`` so the exported encoder needs no preprocessing code.
    ``forward`` returns the unnormalised embedding, :meth:`encode` the L2-normalised one.

    ``memory_format``: how the backbone's weights and its input batches are laid out.
    ``channels_last`` (NHWC, the default) is the layout oneDNN's CPU convolutions and
    cuDNN run fastest: on a 2-core CPU the default ConvNet's bare forward is about 1.4x
    and its forward+backward about 1.4x faster than in ``contiguous_format`` (NCHW), the
    same function up to float summation order (``benchmarks/s1_throughput.py`` and
    ``embed_throughput.py`` print both). It is not part of the saved encoder.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embed_dim: int | None = None,
        mean: float = 0.5,
        std: float = 0.25,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "out_dim"):
            raise ValueError("backbone must have an integer attribute 'out_dim'")
        self.backbone = backbone
        self.set_memory_format(memory_format)
        self.mean = float(mean)
        self.std = float(std)
        if embed_dim is None:
            self.projection: nn.Module = nn.Identity()
            self.embed_dim = int(backbone.out_dim)
        else:
            self.projection = nn.Linear(int(backbone.out_dim), embed_dim)
            self.embed_dim = embed_dim

    def set_memory_format(self, memory_format: torch.memory_format) -> Encoder:
        """Lay the backbone's weights and every input batch out in ``memory_format``."""
        if memory_format not in (torch.channels_last, torch.contiguous_format):
            raise ValueError("memory_format must be channels_last or contiguous_format")
        self.memory_format = memory_format
        self.backbone.to(memory_format=memory_format)
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(self.prepare(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings."""
        return F.normalize(self.forward(x), dim=1)
