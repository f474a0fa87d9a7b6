"""The ``encoder.pt`` format: a plain dict, loadable with ``weights_only=True``, no Lightning.

``{"format": "visctr-encoder/1", "config": {backbone, backbone_kwargs, in_channels,
image_size, embed_dim, mean, std}, "state_dict": {...}, "heads": {name: state_dict},
"meta": {stage, seed, ...}}``. ``heads`` keeps the S1 objective's state (``s1``: its
projector/predictor, and a target network if it has one) and config (``s1_spec``) so S2
can continue the S1 objective from where pre-training left it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from visctr.encoders.backbones import Encoder, build_backbone
from visctr.encoders.config import EncoderConfig
from visctr.errors import InputError
from visctr.io import load_torch, save_torch

FORMAT = "visctr-encoder/1"
CUSTOM = "custom"


def build_encoder(cfg: EncoderConfig, in_channels: int, image_size: int) -> Encoder:
    """A fresh encoder from its config (weights from the current torch RNG)."""
    try:
        backbone = build_backbone(cfg.backbone, in_channels, image_size, **cfg.backbone_kwargs())
    except ValueError as e:
        raise InputError(f"encoder config: {e}") from None
    return Encoder(backbone, cfg.embed_dim)


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


def read_encoder_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    obj = load_torch(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(
            f"{path}: not a visctr encoder file (expected format {FORMAT}); "
            "pass the encoder.pt written by pretrain/finetune/classify"
        )
    return obj


def load_encoder(path: str | Path, backbone: nn.Module | None = None) -> Encoder:
    """The encoder saved at ``path`` in eval mode (safe ``weights_only`` load).

    ``backbone``: the module to load weights into when the file holds a custom backbone.
    """
    path = Path(path)
    obj = read_encoder_file(path)
    return encoder_from_file(obj, path, backbone).eval()


def encoder_from_file(
    obj: dict[str, Any],
    path: Path,
    backbone: nn.Module | None = None,
) -> Encoder:
    spec = obj["config"]
    if backbone is None:
        if spec["backbone"] == CUSTOM:
            raise InputError(f"{path}: holds a custom backbone; pass the module to load it into")
        try:
            backbone = build_backbone(
                spec["backbone"], spec["in_channels"], spec["image_size"], **spec["backbone_kwargs"]
            )
        except ValueError as e:
            raise InputError(f"{path}: {e}") from None
    enc = Encoder(backbone, spec["embed_dim"], spec["mean"], spec["std"])
    try:
        enc.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the encoder ({e})") from None
    return enc
