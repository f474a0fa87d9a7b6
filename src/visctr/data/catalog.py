"""Catalog readers: one interface, three sources.

- ``fashion-mnist:train`` / ``fashion-mnist:test``: idx files (plain or ``.gz``) found in
  ``data_dir``, ``$VISCTR_DATA`` or ``/usr/share/datasets/fashion-mnist``.
- an image folder: one subfolder per category.
- a manifest (``.parquet`` or ``.csv``) with exactly the columns ``item_id, image_path,
  category``; paths are relative to the manifest and may not escape its folder. Ids are
  integers or strings (SKUs like ``sku-0001``): integer ids are kept as the item ids;
  otherwise items get row ids ``0..N-1`` and the user's ids travel beside them as
  ``item_keys`` (written as ``items.item_key``).

Every source yields a :class:`Catalog` of uint8 images ``[N, C, H, W]`` normalised to a
configured size and channel count: any 8-bit Pillow mode (palette, RGBA, CMYK, ...) is
converted to grey or RGB and any size is resized (bilinear, not aspect-preserving: crop
first if that matters). Images with more than 8 bits per channel are rejected rather
than clipped.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visctr.errors import InputError

FASHION_MNIST_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


MAX_IMAGE_SIZE = 1024  # a side; 224-512 is what product-search encoders take


@dataclass
class CatalogConfig:
    """Where the catalog comes from and how images are normalised."""

    source: str = "fashion-mnist:train"
    data_dir: str | None = None
    image_size: int = 28
    channels: int = 1
    max_items: int | None = None  # subsample (seeded, stratified by shuffle) to this many

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size must be in 8..{MAX_IMAGE_SIZE} (pixels a side), got {self.image_size}"
            )
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {self.max_items}")


@dataclass
class Catalog:
    item_ids: np.ndarray  # int64 [N]
    images: np.ndarray  # uint8 [N, C, H, W]
    categories: np.ndarray  # int32 [N], 0..n_categories-1
    category_names: list[str]
    source: str
    item_keys: np.ndarray | None = None  # the user's string ids, when they are not integers
    bids: np.ndarray | None = None  # float64 [N] cost-per-click bids (a manifest's bid/price)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    def subset(self, idx: np.ndarray) -> Catalog:
        keys = None if self.item_keys is None else self.item_keys[idx]
        bids = None if self.bids is None else self.bids[idx]
        return Catalog(
            self.item_ids[idx], self.images[idx], self.categories[idx],
            self.category_names, self.source, keys, bids,
        )  # fmt: skip


def load_catalog(
    cfg: CatalogConfig,
    seed: int = 0,
    images_out: str | os.PathLike | None = None,
    workers: int | None = None,
) -> Catalog:
    """Read the catalog named by ``cfg.source`` and normalise its images.

    An image folder or a manifest is decoded by :func:`read_images` (``workers``
    processes); with ``images_out`` its images go to that ``.npy`` file in chunks and come
    back memory-mapped (memory flat in the catalog's size). ``max_items`` picks the items
    before anything is decoded."""
    src = cfg.source
    if src.startswith("fashion-mnist"):
        cat = _read_fashion_mnist(src, cfg.data_dir)
        if len(cat) == 0:
            raise InputError(f"{src}: catalog is empty")
        cat = _subsample(cat, cfg, seed)  # per-image work below: the same either order
        cat.images = normalise_images(cat.images, cfg.image_size, cfg.channels)
        if images_out is not None:
            from visctr.io import load_npy, save_npy

            save_npy(cat.images, images_out)
            cat.images = load_npy(images_out)
        return cat
    path = Path(src)
    if not path.exists():
        raise InputError(
            f"{path}: catalog not found (expected fashion-mnist:train|test, "
            "an image folder, or a .parquet/.csv manifest)"
        )
    if path.is_dir():
        cat, paths, wheres = _read_folder(path)
    elif path.suffix in (".parquet", ".csv"):
        cat, paths, wheres = _read_manifest(path)
    else:
        raise InputError(f"{path}: unsupported catalog file (use a .parquet or .csv manifest)")
    if len(cat) == 0:
        raise InputError(f"{src}: catalog is empty")
    idx = _subsample_rows(len(cat), cfg, seed)
    if idx is not None:
        cat = cat.subset(idx)
        paths, wheres = [paths[i] for i in idx], [wheres[i] for i in idx]
    cat.images = read_images(paths, cfg, wheres, out=images_out, workers=workers)
    return cat


def _subsample_rows(n: int, cfg: CatalogConfig, seed: int) -> np.ndarray | None:
    if cfg.max_items is None or cfg.max_items >= n:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[: cfg.max_items])


def _subsample(cat: Catalog, cfg: CatalogConfig, seed: int) -> Catalog:
    idx = _subsample_rows(len(cat), cfg, seed)
    return cat if idx is None else cat.subset(idx)


def catalog_fingerprint(cfg: CatalogConfig) -> str:
    """A digest of the catalog's source *content* (file bytes, names, categories), so a
    cache keyed on it follows an edited image or manifest, not a path or an mtime."""
    import hashlib

    h = hashlib.sha256()

    def add(p: Path, name: str) -> None:
        h.update(name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")

    src = cfg.source
    if src.startswith("fashion-mnist"):
        split = src.split(":", 1)[1] if ":" in src else "train"
        root = find_fashion_mnist_dir(cfg.data_dir)
        prefix = "train" if split == "train" else "t10k"
        for base in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            for name in (base, base + ".gz"):
                if (root / name).is_file():
                    add(root / name, name)
                    break
    else:
        path = Path(src)
        if path.is_dir():
            classes, paths, cats = _folder_images(path)
            for img, c in zip(paths, cats, strict=True):
                add(img, f"{classes[c]}/{img.name}")
        elif path.is_file():
            add(path, path.name)
            if path.suffix in (".parquet", ".csv"):
                table = read_manifest_table(path)
                if "image_path" in table.column_names:
                    root = path.parent.resolve()
                    for rel in table.column("image_path").to_pylist():
                        img = (root / str(rel)).resolve()
                        if img.is_file() and img.is_relative_to(root):
                            add(img, str(rel))
        else:
            h.update(b"missing:" + src.encode())  # loading will say what is wrong
    return h.hexdigest()[:32]


def normalise_images(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` at ``size``×``size`` with ``channels`` channels."""
    import torch
    import torch.nn.functional as F

    images = np.asarray(images)
    if images.ndim != 4:
        raise InputError(f"images must be [N, C, H, W], got shape {images.shape}")
    c = images.shape[1]
    if c == channels and images.shape[2] == size and images.shape[3] == size:
        return np.ascontiguousarray(images, dtype=np.uint8)
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for start in range(0, len(images), 4096):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + 4096])).float()
        if c == 3 and channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        elif c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        out[start : start + len(x)] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def find_fashion_mnist_dir(data_dir: str | None) -> Path:
    candidates = [data_dir, os.environ.get("VISCTR_DATA"), DEFAULT_FMNIST_DIR]
    for c in candidates:
        if (
            c
            and (Path(c) / "train-labels-idx1-ubyte.gz").exists()
            or (c and (Path(c) / "train-labels-idx1-ubyte").exists())
        ):
            return Path(c)
    tried = ", ".join(str(c) for c in candidates if c)
    raise InputError(
        f"Fashion-MNIST idx files not found (looked in {tried}); install them with "
        "'apt-get install dataset-fashion-mnist' or pass --data-dir DIR"
    )


def _open_idx(path_base: Path) -> bytes:
    for p in (path_base, path_base.with_name(path_base.name + ".gz")):
        if p.exists():
            try:
                if p.suffix == ".gz":
                    with gzip.open(p, "rb") as f:
                        return f.read()
                return p.read_bytes()
            except (OSError, EOFError) as e:
                raise InputError(f"{p}: unreadable idx file ({e})") from None
    raise InputError(f"{path_base}[.gz]: idx file not found")


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """Parse an idx (MNIST-format) byte string of unsigned bytes."""
    if len(data) < 4:
        raise InputError(f"{where}: truncated idx file (no header)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise InputError(f"{where}: not an unsigned-byte idx file (bad magic)")
    if len(data) < 4 + 4 * ndim:
        raise InputError(f"{where}: truncated idx file (header)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    n = int(np.prod(shape))
    body = data[4 + 4 * ndim :]
    if len(body) != n:
        raise InputError(
            f"{where}: truncated idx file: expected {n} bytes of data for shape "
            f"{shape}, found {len(body)}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_fashion_mnist(src: str, data_dir: str | None) -> Catalog:
    split = src.split(":", 1)[1] if ":" in src else "train"
    if split not in ("train", "test"):
        raise InputError(f"{src}: split must be 'train' or 'test'")
    root = find_fashion_mnist_dir(data_dir)
    prefix = "train" if split == "train" else "t10k"
    img_path = root / f"{prefix}-images-idx3-ubyte"
    lab_path = root / f"{prefix}-labels-idx1-ubyte"
    images = parse_idx(_open_idx(img_path), str(img_path))
    labels = parse_idx(_open_idx(lab_path), str(lab_path))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(
            f"{root}: Fashion-MNIST images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.max(initial=0) >= len(FASHION_MNIST_NAMES):
        raise InputError(f"{lab_path}: label out of range 0..9")
    return Catalog(
        item_ids=np.arange(len(labels), dtype=np.int64),
        images=images[:, None, :, :].copy(),
        categories=labels.astype(np.int32),
        category_names=list(FASHION_MNIST_NAMES),
        source=src,
    )


# Pillow modes with 8-bit channels; convert() maps them to L or RGB without clipping.
EIGHT_BIT_MODES = {
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
}


MAX_DECODE_PIXELS = 40_000_000  # ~160 MB decoded as RGBA: a large product photo, not a bomb


def decode_limit(size: int) -> int:
    """Most pixels an image may have to be decoded for ``size``x``size`` thumbnails."""
    return max(MAX_DECODE_PIXELS, 64 * size * size)


EXIF_ORIENTATION = 0x0112  # the tag phones write instead of rotating the pixels


def _upright(im):
    """``im`` turned as its EXIF orientation tag says (a phone stores a portrait photo as
    landscape pixels plus a tag); the image itself when it has no tag or tag 1."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: the pixels as stored
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _on_white(im):
    """An image with transparency composited on white (a cut-out product photo on a
    transparent background is a product on white, not on black)."""
    from PIL import Image

    has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if not has_alpha:
        return im
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)


def decode_image(path: str | os.PathLike, size: int, channels: int, where: str | None = None):
    """uint8 ``[channels, size, size]`` of one photo file, as visctr reads every photo
    (catalog, query and retrieval photos, ``visctr search``): turned upright by its EXIF
    orientation, transparency on white, converted to ``L`` (1 channel) or ``RGB`` (3),
    resized to ``size`` x ``size``.

    Args:
        path: the image file (any format Pillow reads, 8 bits per channel).
        size: pixels a side of the result.
        channels: 1 or 3.
        where: what to name in errors (file and row the path came from); default the path.

    Raises:
        InputError: missing, corrupt, too large or more than 8 bits per channel.

    >>> decode_image("photo.jpg", 28, 1).shape  # doctest: +SKIP
    (1, 28, 28)
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    where = str(path) if where is None else where
    if not path.is_file():
        raise InputError(f"{where}: image file not found: {path}")
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":  # decode at 1/2..1/8 scale when that is still >= size
                im.draft("L" if channels == 1 else "RGB", (size, size))
            w, h = im.size  # from the header: nothing is decoded yet
            limit = decode_limit(size)
            if w * h > limit:
                raise InputError(
                    f"{where}: image {path} is {w}x{h} pixels, more than the {limit:,} decoded "
                    f"for {size}x{size} images; downscale it first"
                )
            im.load()
            return image_array(im, size, channels, f"{where}: image {path}")
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as e:
        raise InputError(f"{where}: corrupt or unreadable image {path} ({e})") from None


def image_array(im: Any, size: int, channels: int, where: str = "image") -> np.ndarray:
    """uint8 ``[channels, size, size]`` of a decoded PIL image, as :func:`decode_image` makes
    every photo: 8-bit modes only (16-bit and float pixels would be clipped silently), turned
    upright by its EXIF orientation, transparency on white, converted to ``L`` or ``RGB``,
    resized bilinearly. ``visctr.embed`` passes a user's PIL images and arrays through it."""
    from PIL import Image

    if im.mode not in EIGHT_BIT_MODES:
        raise InputError(
            f"{where} has mode {im.mode!r} (more than 8 bits per channel); convert it to an "
            "8-bit image"
        )
    im = _on_white(_upright(im))
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


DECODE_CHUNK = 256  # images per task of the decoding pool
POOL_MIN_IMAGES = 2000  # below this, decoding in-process beats starting a pool


def decode_workers(workers: int | None, n_images: int) -> int:
    """Processes that decode ``n_images``: ``workers`` (``None``: every core, or
    ``VISCTR_WORKERS``), at most one per chunk, and 1 (in-process) for small catalogs."""
    if workers is None:
        env = os.environ.get("VISCTR_WORKERS")
        workers = int(env) if env and env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if n_images < POOL_MIN_IMAGES:
        return 1
    return max(1, min(workers, -(-n_images // DECODE_CHUNK)))


def _read_chunk(task: tuple[list[Path], list[str], int, int]) -> np.ndarray:
    paths, wheres, size, channels = task
    out = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, (p, w) in enumerate(zip(paths, wheres, strict=True)):
        out[i] = decode_image(p, size, channels, w)
    return out


class NpyWriter:
    """A ``.npy`` file written row block by row block, in order: what it holds is on disk,
    never in memory (a write, not a memory map, so the pages do not count as the
    process's own). ``close`` checks that every row was written."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.uint8) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.rows = 0
        self.f = open(self.path, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(self.f, header)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + len(block) > self.shape[0]:
            raise ValueError(f"{self.path}: block {block.shape} does not fit {self.shape}")
        self.f.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self.f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")


def _bounded_imap(pool, fn, tasks: list, window: int):
    """``pool.imap(fn, tasks)`` with at most ``window`` chunks in flight: ``imap`` queues
    every finished result in the parent, so when the parent writes more slowly than the
    workers decode (a busy machine, a slow disk) the decoded chunks pile up in memory."""
    from collections import deque
    from itertools import islice

    it = iter(tasks)
    pending = deque(pool.apply_async(fn, (t,)) for t in islice(it, window))
    while pending:
        block = pending.popleft().get()
        pending.extend(pool.apply_async(fn, (t,)) for t in islice(it, 1))  # the next, if any
        yield block


def read_images(
    paths: list[Path],
    cfg: CatalogConfig,
    wheres: list[str],
    out: str | os.PathLike | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` of image files at the config's size; ``wheres[i]`` names where
    path ``i`` came from (file and row) in errors.

    Decoded in chunks of :data:`DECODE_CHUNK` by a pool of ``workers`` processes (default:
    every core; :func:`decode_workers`). With ``out``, the images go to that ``.npy`` file
    chunk by chunk and come back memory-mapped, so memory stays flat in the number of
    images; without it they are one in-memory array. The result does not depend on the
    number of workers."""
    from tqdm import tqdm

    shape = (len(paths), cfg.channels, cfg.image_size, cfg.image_size)
    size, channels = cfg.image_size, cfg.channels
    tasks = [
        (paths[s : s + DECODE_CHUNK], wheres[s : s + DECODE_CHUNK], size, channels)
        for s in range(0, len(paths), DECODE_CHUNK)
    ]
    n_workers = decode_workers(workers, len(paths))
    writer = NpyWriter(out, shape) if out is not None else None
    arr = None if writer is not None else np.empty(shape, dtype=np.uint8)
    bar = tqdm(
        total=len(paths),
        desc="reading images",
        disable=True if len(paths) < POOL_MIN_IMAGES else None,  # None: only on a terminal
        leave=False,
    )
    pool = None
    ok = False
    try:
        if n_workers > 1:
            import multiprocessing

            # spawn: the workers need PIL and numpy only, not a copy of a process that may
            # hold torch's threads
            pool = multiprocessing.get_context("spawn").Pool(n_workers)
            blocks = _bounded_imap(pool, _read_chunk, tasks, 2 * n_workers)
        else:
            blocks = map(_read_chunk, tasks)
        row = 0
        for block in blocks:
            if writer is not None:
                writer.write(block)
            else:
                arr[row : row + len(block)] = block
            row += len(block)
            bar.update(len(block))
        ok = True
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if writer is not None:
            writer.f.close()
            if not ok:  # a half-written store is never left behind
                writer.path.unlink(missing_ok=True)
    if writer is None:
        return arr
    writer.close()
    from visctr.io import load_npy

    return load_npy(out)


def _folder_images(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """Category names, image paths and their category codes of an image folder.

    Category folders and images must stay inside ``root`` (a symlink out of it is an
    error, as a manifest path escaping its folder is)."""
    real_root = root.resolve()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise InputError(f"{root}: image folder has no category subfolders")
    paths, cats = [], []
    for ci, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                if not p.resolve().is_relative_to(real_root):
                    raise InputError(
                        f"{p}: resolves to {p.resolve()}, outside the catalog folder {root}; "
                        "copy the images into it instead of linking"
                    )
                paths.append(p)
                cats.append(ci)
    return classes, paths, cats


def _read_folder(root: Path) -> tuple[Catalog, list[Path], list[str]]:
    """The folder's catalog (images not decoded yet), its image paths and their names."""
    classes, paths, cats = _folder_images(root)
    if not paths:
        raise InputError(
            f"{root}: image folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    cat = Catalog(
        np.arange(len(paths), dtype=np.int64),
        np.empty((len(paths), 0, 0, 0), dtype=np.uint8),  # placeholder until decoded
        np.asarray(cats, dtype=np.int32),
        classes,
        str(root),
    )
    return cat, paths, [str(p) for p in paths]


MANIFEST_COLUMNS = ("item_id", "image_path", "category")
# optional: the item's cost-per-click bid (or its price, used the same way): RPM in the
# off-policy estimates of an imported world (docs/ope.md)
BID_COLUMNS = ("bid", "price")


def manifest_bids(col, path: Path, column: str) -> np.ndarray:
    """float64 bids, each finite and > 0, from a manifest column (numbers, or text in a
    CSV); an error names the file, the column and the first bad row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.null_count:
        row = int(col.is_null().to_numpy(zero_copy_only=False).nonzero()[0][0])
        raise InputError(
            f"{path}: row {row}: column {column!r} is missing or NaN (every item needs a bid > 0)"
        )
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):  # CSV: text
        values = []
        for row, v in enumerate(col.to_pylist()):
            try:
                values.append(float(v))
            except ValueError:
                raise InputError(
                    f"{path}: row {row}: column {column!r}: {v!r} is not a number"
                ) from None
        b = np.asarray(values, dtype=np.float64)
    elif pa.types.is_floating(t) or pa.types.is_integer(t):
        b = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False))
    else:
        raise InputError(f"{path}: column {column!r} must be numbers, got {t}")
    bad = ~(np.isfinite(b) & (b > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: row {row}: column {column!r}: {float(b[row])!r} is not a finite number > 0 "
            f"({int(bad.sum())} such rows)"
        )
    return b


_INT64 = (-(2**63), 2**63 - 1)


def read_manifest_table(path: Path):
    """The manifest as an Arrow table; CSV columns are read as text (no type guessing, so
    category codes ``01`` and ``1`` stay distinct and ids are parsed strictly)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        with open(path, "rb") as f:
            head = f.readline().decode("utf-8", errors="replace")
        names = [c.strip() for c in next(csv.reader([head.lstrip("\ufeff").rstrip("\r\n")]), [])]
        return pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=True,
                null_values=[""],  # only an empty cell is missing: "NA" may be a SKU
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0][:300]
        if "UTF8" in msg or "UTF-8" in msg:
            raise InputError(
                f"{path}: not UTF-8 text ({msg}); save the manifest as UTF-8"
            ) from None
        raise InputError(f"{path}: unreadable manifest ({msg})") from None


def manifest_ids(col, path: Path, column: str = "item_id") -> tuple[np.ndarray, np.ndarray | None]:
    """``(int64 ids, keys)`` from an id column. Integer ids (an integer column, or text that
    is all integers in their plain decimal form) are the ids themselves and ``keys`` is
    None; any other text makes the ids row numbers ``0..N-1`` and ``keys`` the strings.
    Surrounding whitespace is not part of an id (as in ``visctr import``'s other files),
    and text that is not an integer's plain form (``019288``, ``+5``) stays text, so an id
    matches itself in every file whatever each file's type. Floats (which would be
    truncated), empty strings and int64 overflow are errors."""
    import pyarrow as pa

    if pa.types.is_integer(col.type):
        values = col.to_pylist()
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        text = [v.strip() for v in col.to_pylist()]
        for row, v in enumerate(text):
            if not v:
                raise InputError(f"{path}: row {row}: {column} is empty")
        if not all(re.fullmatch(r"-?(0|[1-9][0-9]*)", v) for v in text):
            return np.arange(len(text), dtype=np.int64), np.asarray(text, dtype=object)
        values = [int(v) for v in text]
    else:
        raise InputError(
            f"{path}: column {column!r} must be integers or strings, got {col.type} (a float "
            "id would be truncated)"
        )
    for row, v in enumerate(values):
        if not _INT64[0] <= v <= _INT64[1]:
            raise InputError(f"{path}: row {row}: {column} {v} does not fit in int64")
    return np.asarray(values, dtype=np.int64), None


def _read_manifest(path: Path) -> tuple[Catalog, list[Path], list[str]]:
    """The manifest's catalog (images not decoded yet), its image paths and where each
    came from (file and row)."""

    table = read_manifest_table(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path}: manifest is missing column {missing[0]!r} "
            f"(needs {', '.join(MANIFEST_COLUMNS)})"
        )
    extra = [c for c in table.column_names if c not in (*MANIFEST_COLUMNS, *BID_COLUMNS)]
    if extra:
        raise InputError(
            f"{path}: manifest has unexpected column {extra[0]!r} (columns are exactly "
            f"{', '.join(MANIFEST_COLUMNS)}, and optionally bid or price; a misspelt name is "
            "caught here)"
        )
    bid_cols = [c for c in BID_COLUMNS if c in table.column_names]
    if len(bid_cols) > 1:
        raise InputError(f"{path}: manifest has both 'bid' and 'price'; keep one")
    if table.num_rows == 0:
        raise InputError(f"{path}: manifest has no rows")
    for col in MANIFEST_COLUMNS:
        nulls = table.column(col).null_count
        if nulls:
            row = table.column(col).is_null().to_numpy(zero_copy_only=False).nonzero()[0][0]
            raise InputError(f"{path}: row {row}: column {col!r} is null ({nulls} null rows)")
    ids, keys = manifest_ids(table.column("item_id"), path)
    named = ids if keys is None else keys
    uniq, counts = np.unique(named, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][0]
        row = int(np.nonzero(named == dup)[0][1])
        shown = repr(str(dup)) if keys is not None else int(dup)
        raise InputError(f"{path}: row {row}: duplicate item_id {shown}")
    cats_raw = [str(c) for c in table.column("category").to_pylist()]
    names = sorted(set(cats_raw))
    index = {n: i for i, n in enumerate(names)}
    root = path.parent.resolve()
    paths, wheres = [], []
    for row, rel in enumerate(table.column("image_path").to_pylist()):
        p = (root / str(rel)).resolve()
        if not p.is_relative_to(root):
            raise InputError(f"{path}: row {row}: image_path {rel!r} escapes the manifest's folder")
        paths.append(p)
        wheres.append(f"{path}: row {row}")
    bids = manifest_bids(table.column(bid_cols[0]), path, bid_cols[0]) if bid_cols else None
    cat = Catalog(
        ids,
        np.empty((len(paths), 0, 0, 0), dtype=np.uint8),  # placeholder until decoded
        np.asarray([index[c] for c in cats_raw], dtype=np.int32),
        names,
        str(path),
        keys,
        bids,
    )
    return cat, paths, wheres
