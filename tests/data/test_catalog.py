import gzip
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from visctr.data.catalog import CatalogConfig, load_catalog, normalise_images, parse_idx
from visctr.errors import InputError


def _idx(arr: np.ndarray) -> bytes:
    return (
        struct.pack(">HBB", 0, 8, arr.ndim)
        + struct.pack(f">{arr.ndim}I", *arr.shape)
        + arr.tobytes()
    )


def _fmnist_dir(tmp_path, n=20, truncate=False):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    data = _idx(imgs)
    if truncate:
        data = data[:-100]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    return imgs, labels


def test_fashion_mnist_reader(tmp_path):
    imgs, labels = _fmnist_dir(tmp_path)
    cat = load_catalog(CatalogConfig(source="fashion-mnist:train", data_dir=str(tmp_path)))
    assert cat.images.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(cat.images[:, 0], imgs)
    np.testing.assert_array_equal(cat.categories, labels)
    assert cat.category_names[7] == "Sneaker"


def test_truncated_idx_is_a_clear_error(tmp_path):
    _fmnist_dir(tmp_path, truncate=True)
    with pytest.raises(InputError, match="truncated idx"):
        load_catalog(CatalogConfig(source="fashion-mnist:train", data_dir=str(tmp_path)))


@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 5))
@settings(max_examples=40, deadline=None)
def test_parse_idx_roundtrip_and_truncation(shape, cut):
    arr = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    data = _idx(arr)
    np.testing.assert_array_equal(parse_idx(data, "x"), arr)
    if cut:
        with pytest.raises(InputError):
            parse_idx(data[:-cut], "x")


def test_missing_dataset_message_names_install(tmp_path, monkeypatch):
    monkeypatch.setenv("VISCTR_DATA", str(tmp_path))
    monkeypatch.setattr("visctr.data.catalog.DEFAULT_FMNIST_DIR", str(tmp_path / "nope"))
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        load_catalog(CatalogConfig(source="fashion-mnist:train", data_dir=str(tmp_path / "x")))


def _png(path, value=128, size=(20, 20), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_image_folder_reader_normalises_size_and_channels(tmp_path):
    _png(tmp_path / "shoes" / "a.png", mode="RGB", size=(40, 30))
    _png(tmp_path / "bags" / "b.png")
    cat = load_catalog(CatalogConfig(source=str(tmp_path), image_size=16, channels=1))
    assert cat.images.shape == (2, 1, 16, 16)
    assert cat.category_names == ["bags", "shoes"]
    cat3 = load_catalog(CatalogConfig(source=str(tmp_path), image_size=16, channels=3))
    assert cat3.images.shape == (2, 3, 16, 16)


def test_corrupt_image_names_the_file(tmp_path):
    _png(tmp_path / "shoes" / "a.png")
    (tmp_path / "shoes" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="bad.png"):
        load_catalog(CatalogConfig(source=str(tmp_path)))


def _manifest(tmp_path, rows, fmt="parquet"):
    for r in rows:
        if r.get("image_path") and not r["image_path"].startswith(".."):
            _png(tmp_path / r["image_path"])
    table = pa.Table.from_pylist(rows)
    path = tmp_path / f"m.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    return path


def test_manifest_reader(tmp_path):
    rows = [
        {"item_id": 10, "image_path": "img/a.png", "category": "x"},
        {"item_id": 11, "image_path": "img/b.png", "category": "y"},
    ]
    for fmt in ("parquet", "csv"):
        cat = load_catalog(CatalogConfig(source=str(_manifest(tmp_path, rows, fmt))))
        assert cat.item_ids.tolist() == [10, 11]
        assert cat.categories.tolist() == [0, 1]


@pytest.mark.parametrize(
    "rows,match",
    [
        ([{"item_id": 1, "image_path": "a.png"}], "missing column 'category'"),
        (
            [
                {"item_id": 1, "image_path": "a.png", "category": "x"},
                {"item_id": 1, "image_path": "b.png", "category": "x"},
            ],
            "row 1: duplicate item_id 1",
        ),
        (
            [
                {"item_id": 1, "image_path": "a.png", "category": "x"},
                {"item_id": 2, "image_path": "b.png", "category": None},
            ],
            "row 1: column 'category' is null",
        ),
        ([{"item_id": 1, "image_path": "../escape.png", "category": "x"}], "escapes"),
        (
            [
                {"item_id": 1, "image_path": "a.png", "category": "x"},
                {"item_id": 2, "image_path": "gone/missing.png", "category": "x"},
            ],
            "row 1: image file not found",
        ),
    ],
)
def test_manifest_bad_input(tmp_path, rows, match):
    path = _manifest(tmp_path, [dict(r) for r in rows if "gone" not in r["image_path"]])
    if any("gone" in r["image_path"] for r in rows):
        pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(InputError, match=match):
        load_catalog(CatalogConfig(source=str(path)))


def test_missing_and_empty_catalogs(tmp_path):
    with pytest.raises(InputError, match="catalog not found"):
        load_catalog(CatalogConfig(source=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no category subfolders"):
        load_catalog(CatalogConfig(source=str(tmp_path / "empty")))


@given(st.integers(1, 3), st.sampled_from([1, 3]), st.sampled_from([1, 3]), st.integers(8, 20))
@settings(max_examples=20, deadline=None)
def test_normalise_images_shape_and_range(n, c_in, c_out, size):
    x = np.random.default_rng(n).integers(0, 256, (n, c_in, 12, 12), dtype=np.uint8)
    y = normalise_images(x, size, c_out)
    assert y.shape == (n, c_out, size, size) and y.dtype == np.uint8


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "1", "LA"])
def test_eight_bit_modes_and_odd_sizes_are_normalised(tmp_path, mode):
    path = tmp_path / "shoes" / "a.png"
    path.parent.mkdir(parents=True)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    Image.new("RGB", (33, 17), (200, 200, 200)).convert(mode).save(path, fmt)
    cat = load_catalog(CatalogConfig(source=str(tmp_path), image_size=16, channels=1))
    assert cat.images.shape == (1, 1, 16, 16)
    assert cat.images.mean() > 150  # light grey stays light (mode "1" dithers), not black


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_images_are_rejected_not_clipped(tmp_path, mode):
    path = tmp_path / "shoes" / "deep.tiff"
    path.parent.mkdir(parents=True)
    Image.new(mode, (20, 20), 40000 if mode != "F" else 0.5).save(path)
    with pytest.raises(InputError, match=rf"deep\.tiff has mode '{mode}'"):
        load_catalog(CatalogConfig(source=str(tmp_path)))


def test_manifest_extra_column_is_an_error(tmp_path):
    path = _manifest(
        tmp_path, [{"item_id": 1, "image_path": "a.png", "category": "x", "catgory": "y"}]
    )
    with pytest.raises(InputError, match=r"m\.parquet: manifest has unexpected column 'catgory'"):
        load_catalog(CatalogConfig(source=str(path)))


def _csv(tmp_path, text: str, images=("a.png", "b.png")):
    for name in images:
        _png(tmp_path / name)
    path = tmp_path / "m.csv"
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    "text,match",
    [
        ("item_id,image_path,category\n ,a.png,x\n2,b.png,x\n", "row 0: item_id is empty"),
        ("item_id,image_path,category\nsku-1,a.png,x\nsku-1,b.png,x\n", "row 1: duplicate item_id 'sku-1'"),
        ("item_id,image_path,category\n1,a.png,x\n99999999999999999999,b.png,x\n", "row 1: item_id 99999999999999999999 does not fit in int64"),
        ("item_id,image_path,category\n1,a.png,x\n2,b.png,\n", "row 1: column 'category' is null"),
        (b"item_id,image_path,category\n1,a.png,caf\xe9\n", "not UTF-8"),
    ],
)  # fmt: skip
def test_manifest_ids_and_text_are_strict(tmp_path, text, match):
    with pytest.raises(InputError, match=match):
        load_catalog(CatalogConfig(source=str(_csv(tmp_path, text))))


def test_float_ids_in_parquet_are_refused(tmp_path):
    _png(tmp_path / "a.png")
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"item_id": [1.0], "image_path": ["a.png"], "category": ["x"]}), path)
    with pytest.raises(InputError, match="'item_id' must be integers or strings, got double"):
        load_catalog(CatalogConfig(source=str(path)))


def test_string_ids_are_kept_as_keys_beside_row_ids(tmp_path):
    """SKUs like ``sku-0001`` (or ``1.5``: never truncated to 1) become row ids 0..N-1 with
    the text kept as the item's key; all-integer ids stay the ids."""
    path = _csv(tmp_path, "item_id,image_path,category\n1.5,a.png,x\nsku-0002,b.png,x\n")
    cat = load_catalog(CatalogConfig(source=str(path)))
    assert cat.item_ids.tolist() == [0, 1]
    assert cat.item_keys.tolist() == ["1.5", "sku-0002"]
    assert cat.subset(np.array([1])).item_keys.tolist() == ["sku-0002"]
    path = _csv(tmp_path, "item_id,image_path,category\n7,a.png,x\n3,b.png,x\n")
    cat = load_catalog(CatalogConfig(source=str(path)))
    assert cat.item_ids.tolist() == [7, 3] and cat.item_keys is None


def test_category_codes_are_text_so_01_and_1_stay_apart(tmp_path):
    path = _csv(tmp_path, "item_id,image_path,category\n1,a.png,01\n2,b.png,1\n")
    cat = load_catalog(CatalogConfig(source=str(path)))
    assert cat.category_names == ["01", "1"] and cat.categories.tolist() == [0, 1]


def test_folder_symlinked_out_of_the_catalog_is_refused(tmp_path):
    outside = tmp_path / "outside"
    _png(outside / "secret.png")
    root = tmp_path / "catalog"
    _png(root / "shoes" / "a.png")
    (root / "bags").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InputError, match="outside the catalog folder"):
        load_catalog(CatalogConfig(source=str(root)))


def test_fingerprint_follows_content_not_paths(tmp_path):
    from visctr.data.catalog import catalog_fingerprint

    _png(tmp_path / "c" / "shoes" / "a.png", value=10)
    _png(tmp_path / "c" / "bags" / "b.png")
    cfg = CatalogConfig(source=str(tmp_path / "c"))
    first = catalog_fingerprint(cfg)
    assert catalog_fingerprint(cfg) == first
    _png(tmp_path / "c" / "shoes" / "a.png", value=11)  # same name, new pixels
    assert catalog_fingerprint(cfg) != first
    rows = [{"item_id": 1, "image_path": "a.png", "category": "x"}]
    m = _manifest(tmp_path / "m", rows)
    before = catalog_fingerprint(CatalogConfig(source=str(m)))
    _png(tmp_path / "m" / "a.png", value=99)  # the manifest is unchanged, an image is not
    assert catalog_fingerprint(CatalogConfig(source=str(m))) != before
    fm = tmp_path / "f"
    fm.mkdir()
    _fmnist_dir(fm)
    f1 = catalog_fingerprint(CatalogConfig(source="fashion-mnist:train", data_dir=str(fm)))
    assert f1 == catalog_fingerprint(CatalogConfig(source="fashion-mnist:train", data_dir=str(fm)))
    (fm / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(20, np.uint8))))
    assert f1 != catalog_fingerprint(CatalogConfig(source="fashion-mnist:train", data_dir=str(fm)))


def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path):
    """A 12000x12000 PNG (a few hundred KB on disk) would cost >1 GB to decode: refused by
    its header size, whatever the file size, with the row that names it."""
    import resource

    (tmp_path / "img").mkdir()
    Image.new("L", (12_000, 12_000)).save(tmp_path / "img" / "big.png")
    _png(tmp_path / "img" / "ok.png")
    assert (tmp_path / "img" / "big.png").stat().st_size < 1_000_000
    path = tmp_path / "m.csv"
    path.write_text("item_id,image_path,category\n1,img/ok.png,x\n2,img/big.png,x\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"row 1: image .*big.png is 12000x12000 pixels"):
        load_catalog(CatalogConfig(source=str(path)))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb  # the 144 MP image was never decoded


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    """A big JPEG is decoded through ``draft`` (1/8 scale here) and still looks right."""
    from visctr.data.catalog import read_images

    yy, xx = np.mgrid[0:4000, 0:4000]
    Image.fromarray(((xx // 500) * 30).astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft("L", (28, 28))
        assert im.size == (500, 500)  # what the decoder will produce
    out = read_images([tmp_path / "big.jpg"], CatalogConfig(), ["t"])
    assert out.shape == (1, 1, 28, 28)
    expected = (np.arange(28) * 4000 / 28 // 500 * 30).astype(float)
    assert np.abs(out[0, 0].mean(0) - expected).max() < 20


def _jpegs(root, n, size=40, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_parallel_chunked_decode_equals_the_in_process_one(tmp_path, monkeypatch):
    """A pool of 2 workers over chunks of 7 images, into a .npy store, gives the very
    array one process decodes in memory; the store is a memory map of that file."""
    import visctr.data.catalog as catalog_mod
    from visctr.data.catalog import read_images

    paths = _jpegs(tmp_path / "img", 30)
    cfg = CatalogConfig(image_size=16, channels=3)
    wheres = [str(p) for p in paths]
    ref = read_images(paths, cfg, wheres, workers=1)
    monkeypatch.setattr(catalog_mod, "POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(catalog_mod, "DECODE_CHUNK", 7)
    assert catalog_mod.decode_workers(2, 30) == 2
    got = read_images(paths, cfg, wheres, out=tmp_path / "store.npy", workers=2)
    assert isinstance(got, np.memmap) and np.array_equal(np.asarray(got), ref)
    assert np.array_equal(np.load(tmp_path / "store.npy"), ref)
    # a corrupt image in a worker's chunk: its one error, and no store left behind
    (tmp_path / "img" / "20.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match=r"20.jpg"):
        read_images(paths, cfg, wheres, out=tmp_path / "bad.npy", workers=2)
    assert not (tmp_path / "bad.npy").exists()


def test_max_items_picks_the_items_before_decoding(tmp_path):
    """Only the sampled items are decoded: a corrupt image outside the sample is not read."""
    rows = [{"item_id": i, "image_path": f"img/{i}.png", "category": "x"} for i in range(12)]
    path = _manifest(tmp_path, rows)
    full = load_catalog(CatalogConfig(source=str(path)))
    sub = load_catalog(CatalogConfig(source=str(path), max_items=5), seed=3)
    keep = np.searchsorted(full.item_ids, sub.item_ids)
    assert len(sub) == 5 and np.array_equal(sub.images, full.images[keep])
    skipped = next(i for i in range(12) if i not in set(sub.item_ids.tolist()))
    (tmp_path / "img" / f"{skipped}.png").write_bytes(b"garbage")
    again = load_catalog(CatalogConfig(source=str(path), max_items=5), seed=3)
    assert np.array_equal(again.images, sub.images)


def test_only_plain_decimal_text_is_an_integer_id(tmp_path):
    """``019288`` and ``+5`` are not the integers 19288 and 5 (the same SKU as text in a
    log would not match them); surrounding whitespace is not part of an id."""
    path = _csv(tmp_path, "item_id,image_path,category\n019288,a.png,x\n7,b.png,x\n")
    cat = load_catalog(CatalogConfig(source=str(path)))
    assert cat.item_ids.tolist() == [0, 1] and cat.item_keys.tolist() == ["019288", "7"]
    path = _csv(tmp_path, "item_id,image_path,category\n+5,a.png,x\nsku-1 ,b.png,x\n")
    assert load_catalog(CatalogConfig(source=str(path))).item_keys.tolist() == ["+5", "sku-1"]
    path = _csv(tmp_path, "item_id,image_path,category\n 7 ,a.png,x\n-3,b.png,x\n")
    cat = load_catalog(CatalogConfig(source=str(path)))
    assert cat.item_ids.tolist() == [7, -3] and cat.item_keys is None
