"""Embed a user's own photos with a trained encoder: :func:`embed`, ``visctr.embed``.

The encoder knows its own preprocessing (as timm's models do): the side and channels it
was trained on are recorded in ``encoder.pt``, and the normalisation is inside the
encoder. A photo is decoded, converted and resized exactly as the catalog decoder does it
(:func:`visctr.data.decode_image`: upright by EXIF orientation,
transparency on white), so a catalog photo embedded here gives the vector
``visctr embed`` wrote for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visctr.encoders.backbones import Encoder
from visctr.errors import InputError

Photo = Any  # str | Path | PIL.Image.Image | np.ndarray | torch.Tensor


def _geometry(encoder: Encoder, image_size: int | None) -> tuple[int, int]:
    size = image_size if image_size is not None else encoder.image_size
    channels = encoder.in_channels
    if size is None or channels is None:
        raise InputError(
            "the encoder does not record the photos it was trained on; load it with "
            "visctr.load_encoder(path), or set encoder.image_size and encoder.in_channels"
        )
    return int(channels), int(size)


def _as_array(photo: Photo, channels: int, size: int, where: str) -> np.ndarray:
    """One photo as a ``[channels, size, size]`` uint8 (or float in [0, 1]) array."""
    from PIL import Image

    from visctr.data.catalog import decode_image, image_array

    if isinstance(photo, str | Path):
        return decode_image(Path(photo), size, channels, where)
    if isinstance(photo, Image.Image):
        return image_array(photo, size, channels, where)
    if isinstance(photo, torch.Tensor):
        t = photo.detach().cpu()
        if t.dim() == 3 and tuple(t.shape) == (channels, size, size) and t.is_floating_point():
            return t.float().numpy()
        if t.dtype != torch.uint8 or t.dim() not in (2, 3):
            raise InputError(
                f"{where}: a tensor photo is uint8 [C, H, W] (any size), or float in [0, 1] "
                f"already at [{channels}, {size}, {size}]; got {t.dtype} {list(t.shape)}"
            )
        photo = t.numpy() if t.dim() == 2 else t.permute(1, 2, 0).numpy()  # CHW -> HWC
    if isinstance(photo, np.ndarray):
        if photo.dtype != np.uint8 or photo.ndim not in (2, 3):
            raise InputError(
                f"{where}: an array photo is uint8 [H, W] or [H, W, C] (as PIL and OpenCV "
                f"give them); got {photo.dtype} {list(photo.shape)}"
            )
        if photo.ndim == 3 and photo.shape[2] == 1:
            photo = photo[:, :, 0]
        try:
            im = Image.fromarray(np.ascontiguousarray(photo))
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: not an image array ({e})") from None
        return image_array(im, size, channels, where)
    raise InputError(
        f"{where}: expected a file path, a PIL image, a numpy array or a tensor, "
        f"got {type(photo).__name__}"
    )


def embed(
    encoder: Encoder | str | Path,
    images: Photo | Iterable[Photo],
    *,
    batch_size: int = 256,
    device: str = "auto",
    image_size: int | None = None,
) -> np.ndarray:
    """L2-normalised embeddings of photos, one row per photo.

    Args:
        encoder: an ``encoder.pt`` path, or an encoder from :func:`visctr.load_encoder`.
        images: one photo or a sequence of them: file paths (any 8-bit format PIL reads),
            PIL images, uint8 numpy arrays ``[H, W]`` / ``[H, W, C]``, or tensors (uint8
            ``[C, H, W]`` of any size, or float in [0, 1] at the encoder's size). Each is
            converted to the encoder's channels and resized to its side as the catalog
            decoder does.
        batch_size: photos per forward pass.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        image_size: the side to resize to, for an encoder that does not record one.

    Returns:
        A float32 array ``[n, D]``, each row of unit length, in the order of ``images``.

    Raises:
        InputError: a file that is missing or not an image, an input of another type.

    Example:
        >>> enc = visctr.load_encoder(run_dir / "seed_0/encoders/s1_s2/encoder.pt")
        >>> photos = [np.zeros((40, 30, 3), np.uint8), np.full((28, 28), 200, np.uint8)]
        >>> visctr.embed(enc, photos).shape                 # a photo of any size, RGB or grey
        (2, 64)
    """
    from visctr.encoders.checkpoint import load_encoder
    from visctr.encoders.export import _device, embed_images

    if isinstance(encoder, str | Path):
        encoder = load_encoder(encoder)
    if not isinstance(encoder, Encoder):
        raise InputError(f"encoder: expected a path or a visctr Encoder, got {type(encoder)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    single = isinstance(images, str | Path | np.ndarray | torch.Tensor) or hasattr(
        images, "getpixel"
    )
    photos = [images] if single else list(images)
    channels, size = _geometry(encoder, image_size)
    arrays = [
        _as_array(p, channels, size, str(p) if isinstance(p, str | Path) else f"images[{i}]")
        for i, p in enumerate(photos)
    ]
    if not arrays:
        return np.zeros((0, encoder.embed_dim), np.float32)
    if any(a.dtype != np.uint8 for a in arrays):  # as Encoder.prepare scales uint8
        arrays = [a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else a
                  for a in arrays]  # fmt: skip
    batch = np.stack(arrays)
    dev = _device(device)
    was_training = encoder.training
    tensors = [*encoder.parameters(), *encoder.buffers()]
    home = tensors[0].device if tensors else None
    encoder.eval().to(dev)
    try:
        chunks = embed_images(encoder, batch, np.arange(len(batch)), batch_size, dev)
        return np.concatenate(list(chunks))
    finally:  # the caller's encoder as it was: its mode and its device
        encoder.train(was_training)
        if home is not None:
            encoder.to(home)
