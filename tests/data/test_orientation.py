"""Every photo is read upright: a phone stores a portrait photo as landscape pixels plus an
EXIF orientation tag, and each of the 8 tag values must decode to the upright original
at every entry point that decodes a user's photo (``decode_image`` itself, an image
folder, a manifest, and ``visctr import``'s catalog, query and retrieval photos; ``visctr
search`` is in ``tests/serve/test_export.py``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visctr.data import CatalogConfig, decode_image, load_catalog

SIZE = 16
# the transpose that stores an upright image under each tag (the inverse of what the tag
# asks a reader to do)
STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
ORIENTATIONS = sorted(STORE)


def upright() -> Image.Image:
    """A 32x24 RGB photo whose every rotation and mirror looks different: smooth ramps
    (little JPEG noise) and one bright corner."""
    y, x = np.mgrid[0:24, 0:32]
    arr = np.stack([x * 7, y * 9, np.full_like(x, 60)], axis=-1).astype(np.uint8)
    arr[:8, :8] = 255
    return Image.fromarray(arr, "RGB")


def save_tagged(path: Path, orientation: int, fmt: str = "JPEG") -> Path:
    """``upright()`` stored as a camera with that orientation tag stores it."""
    im = upright()
    if STORE[orientation] is not None:
        im = im.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"quality": 98, "subsampling": 0} if fmt == "JPEG" else {}
    im.save(path, format=fmt, exif=exif.tobytes(), **kw)
    return path


def reference(tmp: Path, channels: int = 3) -> np.ndarray:
    p = tmp / "upright.png"
    upright().save(p)
    return decode_image(p, SIZE, channels)


def assert_upright(got: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    assert got.shape == ref.shape
    assert diff.mean() < 3 and diff.max() < 40, (diff.mean(), diff.max())


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_decode_image_turns_a_tagged_photo_upright(orientation, tmp_path):
    ref = reference(tmp_path)
    for channels in (1, 3):
        got = decode_image(save_tagged(tmp_path / "p.jpg", orientation), SIZE, channels)
        assert_upright(got, reference(tmp_path, channels) if channels == 1 else ref)


def test_the_tagged_photos_would_be_wrong_read_as_stored(tmp_path):
    """The test photos do tell the orientations apart: read without the tag, 7 of 8 are off."""
    ref = reference(tmp_path)
    for o in ORIENTATIONS[1:]:
        raw = np.asarray(Image.open(save_tagged(tmp_path / "p.jpg", o)).resize((SIZE, SIZE)))
        assert np.abs(raw.transpose(2, 0, 1).astype(int) - ref).mean() > 20, o


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("layout", ["folder", "manifest"])
def test_catalogs_read_tagged_photos_upright(layout, orientation, tmp_path):
    root = tmp_path / "cat"
    save_tagged(root / "shoes" / "a.jpg", orientation)
    src = root
    if layout == "manifest":
        src = root / "manifest.csv"
        src.write_text("item_id,image_path,category\nsku-1,shoes/a.jpg,shoes\n")
    cat = load_catalog(CatalogConfig(source=str(src), image_size=SIZE, channels=3), workers=1)
    assert_upright(np.asarray(cat.images[0]), reference(tmp_path))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_import_reads_catalog_query_and_retrieval_photos_upright(orientation, tmp_path):
    from visctr.world import World
    from visctr.world.importer import ImportConfig, import_world

    shop = tmp_path / "shop"
    for name in ("item.jpg", "query.jpg", "labelled.jpg"):
        save_tagged(shop / name, orientation)
    (shop / "other.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(shop / "other.png")
    rows = {
        "catalog.csv": [("item_id", "image_path", "category"), ("a", "item.jpg", "x")]
        + [("b", "other.png", "y")],
        "queries.csv": [("query_id", "image_path", "user_id", "timestamp")]
        + [("q1", "query.jpg", "u", "2026-01-01T00:00:00Z")]
        + [("q2", "other.png", "u", "2026-01-02T00:00:00Z")],
        "impressions.csv": [("query_id", "item_id", "position", "clicked")]
        + [("q1", "a", 0, 1), ("q1", "b", 1, 0), ("q2", "b", 0, 0)],
        "retrieval.csv": [("query_id", "image_path", "item_id"), ("r1", "labelled.jpg", "a")],
    }
    for name, body in rows.items():
        with open(shop / name, "w", newline="") as f:
            csv.writer(f).writerows(body)
    import_world(
        shop / "catalog.csv", shop / "queries.csv", shop / "impressions.csv", tmp_path / "w",
        retrieval=shop / "retrieval.csv", cfg=ImportConfig(image_size=SIZE, channels=3),
        echo=lambda *_: None,
    )  # fmt: skip
    w = World.load(tmp_path / "w")
    ref = reference(tmp_path)
    item = int(np.flatnonzero(w.items["item_key"] == "a")[0])
    assert_upright(np.asarray(w.item_images[w.items["image_row"][item]]), ref)
    for key in ("q1", "r1"):
        row = int(np.flatnonzero(w.queries["query_key"] == key)[0])
        assert_upright(np.asarray(w.query_images[w.queries["image_row"][row]]), ref)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_python_api_embeds_a_tagged_photo_as_its_upright_original(orientation, tmp_path):
    """``visctr.embed`` on a phone's tagged JPEG, given as a path and as an opened PIL image,
    gives the vector of the upright original. The encoder's vector is the normalised pixels
    themselves, so a turned or mirrored photo cannot give the same vector."""
    import torch

    import visctr

    class Pixels(torch.nn.Module):
        out_dim = 3 * SIZE * SIZE

        def forward(self, x):
            return x.flatten(1)

    enc = visctr.Encoder(Pixels(), embed_dim=None)
    enc.in_channels, enc.image_size = 3, SIZE
    upright().save(tmp_path / "upright.png")
    tagged = save_tagged(tmp_path / "p.jpg", orientation)
    with Image.open(tagged) as opened:
        ref, by_path, by_pil = visctr.embed(enc, [tmp_path / "upright.png", tagged, opened])
    for got in (by_path, by_pil):
        assert float(got @ ref) > 0.995, (orientation, float(got @ ref))
