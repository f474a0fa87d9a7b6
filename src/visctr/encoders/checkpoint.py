"""The ``encoder.pt`` format: a plain dict, loadable with ``weights_only=True``, no Lightning.

``{"format": "visctr-encoder/1", "config": {backbone, backbone_kwargs, in_channels,
image_size, embed_dim, mean, std}, "state_dict": {...}, "heads": {name: state_dict},
"meta": {stage, seed, ...}}``. ``heads`` keeps the S1 objective's state (``s1``: its
projector/predictor, and a target network if it has one) and config (``s1_spec``) so S2
can continue the S1 objective from where pre-training left it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visctr.encoders.backbones import Encoder, build_backbone, check_backbone_name
from visctr.encoders.config import EncoderConfig
from visctr.errors import InputError
from visctr.io import check_state_dict, field, load_torch, save_torch

FORMAT = "visctr-encoder/1"
CUSTOM = "custom"


def build_encoder(cfg: EncoderConfig, in_channels: int, image_size: int) -> Encoder:
    """A fresh encoder from its config: the backbone's weights from ``cfg.weights`` when
    given, else from the current torch RNG (the projection always from the RNG)."""
    try:
        backbone = build_backbone(cfg.backbone, in_channels, image_size, **cfg.backbone_kwargs())
    except ValueError as e:
        raise InputError(f"encoder config: {e}") from None
    if cfg.weights is not None:
        load_backbone_weights(backbone, cfg.weights, cfg.backbone)
    enc = Encoder(backbone, cfg.embed_dim)
    enc.in_channels, enc.image_size = int(in_channels), int(image_size)
    return enc


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local ``.pth`` / ``.pt`` (a safe ``weights_only`` load) or
    ``.safetensors`` file; a checkpoint that wraps it (``state_dict``, ``model``) and a
    ``module.`` prefix (DataParallel) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: encoder.weights file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise InputError(
                f"{path}: reading .safetensors needs safetensors: pip install 'visctr[weights]'"
            ) from None
        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError, ...
            raise InputError(f"{path}: not a readable .safetensors file ({e})") from None
    elif path.suffix in (".pth", ".pt", ".bin"):
        state = load_torch(path)
    else:
        raise InputError(f"{path}: encoder.weights must be a .pth, .pt or .safetensors file")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise InputError(f"{path}: holds no state dict (a mapping of tensor names to tensors)")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_backbone_weights(backbone: nn.Module, source: str, name: str) -> None:
    """Load pretrained weights into ``backbone`` from ``source``: a local state-dict file
    (:func:`read_weights_file`) or the name of one of torchvision's weights enums (e.g.
    ``IMAGENET1K_V2`` for ``torchvision:resnet50``), read from torch's cache only. The
    classifier's keys (``backbone.head_prefix``) are dropped; every other key must match
    the backbone's exactly, name and shape (one error line otherwise)."""
    path = weights_path(source, name)
    state = read_weights_file(path)
    head = getattr(backbone, "head_prefix", None)
    if head:
        state = {k: v for k, v in state.items() if not str(k).startswith(head)}
    check_state_dict(state, backbone, path, f"weights for {name}")
    with torch.no_grad():
        backbone.load_state_dict(state)


def weights_path(source: str, name: str) -> Path:
    """The file ``encoder.weights`` names: itself, or a torchvision enum's cached file."""
    return _weights_enum_file(source, name) if _is_enum_name(source) else Path(source)


def _is_enum_name(source: str) -> bool:
    return "/" not in source and "." not in source and source.upper() == source


def _weights_enum_file(enum: str, name: str) -> Path:
    """The cached file of torchvision's weights ``enum`` for ``torchvision:<model>``."""
    if not name.startswith("torchvision:"):
        raise InputError(
            f"encoder.weights {enum!r} names torchvision weights; {name} is not a "
            "torchvision:<model> backbone (pass a local .pth or .safetensors file)"
        )
    import torchvision

    model = name[len("torchvision:") :]
    try:
        weights = torchvision.models.get_model_weights(model)[enum]
    except (KeyError, ValueError):
        choices = ", ".join(w.name for w in torchvision.models.get_model_weights(model))
        raise InputError(
            f"encoder.weights: torchvision:{model} has no weights {enum!r} ({choices})"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise InputError(
            f"encoder.weights {enum}: {cached} is not in torch's cache, and visctr downloads "
            f"nothing; fetch {weights.url} there where a network exists, or pass the file "
            "as encoder.weights"
        )
    return cached


def encoder_spec(
    encoder: Encoder, cfg: EncoderConfig | None, in_channels: int, image_size: int
) -> dict[str, Any]:
    """What :func:`load_encoder` needs to rebuild ``encoder``; ``backbone: custom`` when it
    was not built from a config (then pass the backbone module to :func:`load_encoder`)."""
    return {
        "backbone": cfg.backbone if cfg is not None else CUSTOM,
        "backbone_kwargs": cfg.backbone_kwargs() if cfg is not None else {},
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "embed_dim": encoder.embed_dim if not isinstance(encoder.projection, nn.Identity) else None,
        "mean": encoder.mean,
        "std": encoder.std,
    }


def save_encoder(
    path: str | Path,
    encoder: Encoder,
    spec: dict[str, Any],
    heads: dict[str, dict] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    save_torch(
        {
            "format": FORMAT,
            "config": spec,
            "state_dict": state,
            "heads": heads or {},
            "meta": meta or {},
        },
        path,
    )


# Bounds on what an encoder file may ask to build: generous for real models, small enough
# that a hostile file cannot make visctr allocate unbounded memory before its weights are
# checked against the architecture.
SPEC_LIMITS = {"in_channels": (1, 64), "image_size": (8, 4096), "embed_dim": (1, 65_536)}
BACKBONE_LIMITS = {"width": (1, 4096), "stages": (1, 12), "blocks": (1, 64)}


def read_encoder_file(path: str | Path) -> dict[str, Any]:
    """The dict in an ``encoder.pt``, loaded safely, with its fields checked (types, bounds);
    the weights are checked against the architecture by :func:`encoder_from_file`."""
    path = Path(path)
    obj = load_torch(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(
            f"{path}: not a visctr encoder file (expected format {FORMAT}); "
            "pass the encoder.pt written by pretrain/finetune/classify"
        )
    spec = field(obj, "config", path, dict)
    c = "config."
    field(spec, "backbone", path, str, check=_backbone_ok, prefix=c)
    kwargs = field(spec, "backbone_kwargs", path, dict, prefix=c)
    for key in kwargs:
        if key in BACKBONE_LIMITS:
            lo, hi = BACKBONE_LIMITS[key]
            field(kwargs, key, path, int, lo=lo, hi=hi, prefix=f"{c}backbone_kwargs.")
        elif key == "small_stem":
            field(kwargs, key, path, (bool, type(None)), prefix=f"{c}backbone_kwargs.")
        else:
            raise InputError(f"{path}: unknown field {c}backbone_kwargs.{str(key)[:40]!r}")
    for key, (lo, hi) in SPEC_LIMITS.items():
        types = (int, type(None)) if key == "embed_dim" else int
        field(spec, key, path, types, lo=lo, hi=hi, prefix=c)
    field(spec, "mean", path, (int, float, list, tuple), check=_norm_ok(False), prefix=c)
    field(spec, "std", path, (int, float, list, tuple), check=_norm_ok(True), prefix=c)
    field(obj, "state_dict", path, dict)
    heads = field(obj, "heads", path, dict)
    for key in heads:
        field(heads, key, path, dict, prefix="heads.")
    field(obj, "meta", path, dict)
    return obj


def _backbone_ok(name: str) -> bool:
    if name == CUSTOM:
        return True
    try:
        check_backbone_name(name)
    except ValueError:
        return False
    return True


def _norm_ok(positive: bool):
    """A normalisation constant: a finite number, or 1-64 of them (one per channel)."""

    def ok(v) -> bool:
        values = list(v) if isinstance(v, list | tuple) else [v]
        return 1 <= len(values) <= 64 and all(
            isinstance(x, int | float) and math.isfinite(x) and (x > 0 or not positive)
            for x in values
        )

    return ok


def load_encoder(path: str | Path, backbone: nn.Module | None = None) -> Encoder:
    """The encoder saved at ``path`` in eval mode (safe ``weights_only`` load).

    Args:
        path: an ``encoder.pt`` written by ``pretrain``, ``finetune`` or ``classify``.
        backbone: the module to load weights into when the file holds a custom backbone.

    Returns:
        The :class:`~visctr.encoders.backbones.Encoder`, with the ``image_size`` and
        ``in_channels`` of the photos it was trained on (what :func:`visctr.embed` resizes
        to); its normalisation is inside it.

    Raises:
        InputError: not a visctr encoder file, or weights that do not fit its architecture.

    Example:
        >>> run_dir = Path("runs/demo")  # a finished visctr run  # doctest: +SKIP
        >>> enc = visctr.load_encoder(run_dir / "seed_0/encoders/s1_s2/encoder.pt")
        >>> (enc.in_channels, enc.image_size, enc.embed_dim)
        (1, 28, 64)
    """
    path = Path(path)
    obj = read_encoder_file(path)
    return encoder_from_file(obj, path, backbone).eval()


def encoder_from_file(
    obj: dict[str, Any],
    path: Path,
    backbone: nn.Module | None = None,
) -> Encoder:
    """The encoder of a :func:`read_encoder_file` dict; its weights must fit the
    architecture exactly (checked on the meta device before anything is allocated)."""
    spec = obj["config"]

    def build() -> nn.Module:
        try:
            return build_backbone(
                spec["backbone"], spec["in_channels"], spec["image_size"], **spec["backbone_kwargs"]
            )
        except (ValueError, TypeError) as e:
            raise InputError(f"{path}: {e}") from None

    if backbone is None:
        if spec["backbone"] == CUSTOM:
            raise InputError(f"{path}: holds a custom backbone; pass the module to load it into")
        with torch.device("meta"):
            shape_ref = Encoder(build(), spec["embed_dim"], spec["mean"], spec["std"])
        check_state_dict(obj["state_dict"], shape_ref, path, "encoder weights")
        backbone = build()
    enc = Encoder(backbone, spec["embed_dim"], spec["mean"], spec["std"])
    check_state_dict(obj["state_dict"], enc, path, "encoder weights")
    try:
        enc.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the encoder ({e})") from None
    enc.in_channels, enc.image_size = int(spec["in_channels"]), int(spec["image_size"])
    return enc
