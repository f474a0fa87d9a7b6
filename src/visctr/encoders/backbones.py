"""Image backbones and the :class:`Encoder` wrapper every stage trains.

A backbone maps ``[B, C, H, W]`` float images to ``[B, out_dim]`` features. The
:class:`Encoder` adds fixed input normalisation and an optional linear projection to
``embed_dim``; its output is *the* embedding that S1, S2 and ResNet-C train and that
``embed`` exports (L2-normalised by :meth:`Encoder.encode`).

Backbones: visctr's own (``convnet``, ``resnet18``, ``resnet50``, sized for small images),
``torchvision:<name>`` (any classifier of ``torchvision.models``: resnet*, convnext_*,
efficientnet_*, vit_*, ...; its last linear layer, the classifier, is dropped) and
``timm:<name>`` (any ``timm`` model, built with ``num_classes=0``; the ``visctr[timm]``
extra). The ecosystem's backbones take RGB input normalised with their training
statistics (ImageNet's unless timm says otherwise); a grey catalog is repeated to three
channels. Pretrained weights come from a local file (``encoder.weights``, see
:func:`load_backbone_weights`): nothing is downloaded.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("convnet", "resnet18", "resnet50")
PREFIXES = ("torchvision:", "timm:")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def check_backbone_name(name: str) -> str:
    """``name`` when it names a backbone visctr can build (the registries are asked when
    it is built); else a ValueError listing the choices."""
    if name in BACKBONES:
        return name
    for prefix in PREFIXES:
        if name.startswith(prefix) and _MODEL_NAME.fullmatch(name[len(prefix) :]):
            return name
    raise ValueError(
        f"unknown backbone {name!r} (choose one of {', '.join(BACKBONES)}, "
        "torchvision:<name> or timm:<name>)"
    )


def _torchvision_model(name: str, image_size: int) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(
            f"torchvision has no classification model {name!r} (e.g. resnet50, "
            "convnext_tiny, efficientnet_b0, vit_b_16)"
        )
    kw = {"image_size": image_size} if name.startswith("vit_") else {}  # ViTs fix the size
    net = torchvision.models.get_model(name, weights=None, **kw)
    head = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not head:
        raise ValueError(f"torchvision:{name} has no linear classifier to drop")
    head_name, linear = head[-1]
    parent = net.get_submodule(head_name.rpartition(".")[0]) if "." in head_name else net
    setattr(parent, head_name.rpartition(".")[2], nn.Identity())
    net.out_dim = int(linear.in_features)
    net.head_prefix = head_name + "."
    net.input_channels = 3
    net.input_mean, net.input_std = IMAGENET_MEAN, IMAGENET_STD
    return net


def _timm_model(name: str, image_size: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"backbone timm:{name} needs timm: pip install 'visctr[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them)")
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size)
    except TypeError:  # not a model with an input size (CNNs take any)
        net = timm.create_model(name, pretrained=False, num_classes=0)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    net.out_dim = int(net.num_features)
    head = cfg.get("classifier") or "head"
    net.head_prefix = (head[0] if isinstance(head, list | tuple) else head) + "."
    net.input_channels = 3
    net.input_mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    net.input_std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return net


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
    """Build backbone ``name`` (``convnet`` | ``resnet18`` | ``resnet50`` |
    ``torchvision:<name>`` | ``timm:<name>``); has ``out_dim``.

    ``convnet`` takes ``width``, ``stages``, ``blocks``; visctr's resnets take
    ``small_stem`` (3×3 stride-1 stem, no max-pool; the default for images under 64 px).
    The ecosystem's backbones take no option; they also carry ``input_channels`` (3),
    ``input_mean``/``input_std`` (per channel) and ``head_prefix`` (the dropped
    classifier's keys in their checkpoints).
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    check_backbone_name(name)
    for prefix, build in (("torchvision:", _torchvision_model), ("timm:", _timm_model)):
        if name.startswith(prefix):
            if kw:
                raise ValueError(f"{name}: unknown option(s) {sorted(kw)}")
            return build(name[len(prefix) :], image_size)
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

    ``image_size`` / ``in_channels``: the photos it was trained on (side in pixels,
    1 or 3 channels), recorded in ``encoder.pt``; :func:`visctr.embed` resizes a user's
    photos to them. ``None`` on an encoder built by hand until they are set.

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
        mean: float | tuple[float, ...] | None = None,
        std: float | tuple[float, ...] | None = None,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        super().__init__()
        self.image_size: int | None = None
        self.in_channels: int | None = None
        if not hasattr(backbone, "out_dim"):
            raise ValueError("backbone must have an integer attribute 'out_dim'")
        self.backbone = backbone
        self.set_memory_format(memory_format)
        if mean is None:
            mean = getattr(backbone, "input_mean", 0.5)
        if std is None:
            std = getattr(backbone, "input_std", 0.25)
        self.mean = _norm_value(mean)
        self.std = _norm_value(std)
        # a grey image is repeated to the channels of a backbone that takes RGB
        self.channels = int(getattr(backbone, "input_channels", 0))
        self.per_channel = isinstance(self.mean, tuple) or isinstance(self.std, tuple)
        if self.per_channel:
            n = max(len(v) if isinstance(v, tuple) else 1 for v in (self.mean, self.std))
            for name, v in (("mean", self.mean), ("std", self.std)):
                t = torch.tensor(v if isinstance(v, tuple) else (v,) * n, dtype=torch.float32)
                if t.numel() != n:
                    raise ValueError(f"{name} has {t.numel()} values, expected {n}")
                self.register_buffer(f"input_{name}", t.reshape(1, n, 1, 1), persistent=False)
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
        if self.channels and x.dim() == 4:
            x = x.expand(-1, self.channels, -1, -1)  # 1 channel -> 3; a no-op on 3
        if self.per_channel:
            x = (x - self.input_mean) / self.input_std
        else:
            x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(self.prepare(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings."""
        return F.normalize(self.forward(x), dim=1)


def _norm_value(v: Any) -> float | tuple[float, ...]:
    """A normalisation constant: one float, or one per channel (a tuple)."""
    if isinstance(v, list | tuple):
        return tuple(float(x) for x in v) if len(v) > 1 else float(v[0])
    return float(v)
