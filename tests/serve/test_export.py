"""Serving export: the TorchScript encoder reproduces the PyTorch embeddings, and search
with only the export folder finds an item from its own photo."""

import json
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from visctr.cli import main
from visctr.encoders import EncoderConfig, build_encoder, embed, load_encoder
from visctr.encoders.checkpoint import encoder_spec, save_encoder
from visctr.serve.export import IndexConfig, build_index, export_artifacts, search_image


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_export_reproduces_embeddings_and_searches(encoder_and_embeddings, tmp_path, kind):
    enc_path, emb_dir, world = encoder_and_embeddings
    out = export_artifacts(enc_path, emb_dir, tmp_path / "export", IndexConfig(kind=kind, nlist=8))
    ts = _ts_load(out / "encoder.ts")
    images = torch.from_numpy(np.asarray(world.item_images[:32]))
    ref = torch.nn.functional.normalize(load_encoder(enc_path)(images), dim=1)
    torch.testing.assert_close(ts(images), ref, atol=1e-5, rtol=1e-4)
    # an item's own photo finds itself (flat is exact; the approximate indexes nearly so)
    row = 5
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[row, 0])).save(png)
    hits = search_image(out, png, k=10)
    assert len(hits) == 10
    assert world.items["item_id"][row] in [i for i, _ in hits]
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)


def test_cli_export_and_search(encoder_and_embeddings, tmp_path):
    enc_path, emb_dir, world = encoder_and_embeddings
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--encoder",
            str(enc_path),
            "--embeddings",
            str(emb_dir),
            "--index",
            "flat",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 0, res.output
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[3, 0])).save(png)
    res = CliRunner().invoke(
        main, ["search", "--export", str(tmp_path / "e"), "--image", str(png), "--top-k", "3"]
    )
    assert res.exit_code == 0, res.output
    assert f"item {world.items['item_id'][3]}" in res.output.splitlines()[0]
    res = CliRunner().invoke(
        main, ["search", "--export", str(tmp_path / "missing"), "--image", str(png)]
    )
    assert res.exit_code == 2 and "export.json" in res.output


def test_build_index_matches_exact_on_easy_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("flat", "hnsw"):
        _, idx = build_index(x, IndexConfig(kind=kind)).search(x[:20], 1)
        assert (idx[:, 0] == np.arange(20)).mean() >= 0.95


def test_export_with_debias_serves_and_indexes_the_same_transform(encoder_and_embeddings, tmp_path):
    """``debias.ts`` (query side) is the function ``visctr evaluate --debias`` applies, and
    the index holds the item vectors through it."""
    import faiss

    from visctr.embeddings import read_embeddings
    from visctr.s3.artifact import debias_transform, export_debias
    from visctr.s3.config import DebiasConfig
    from visctr.s3.net import DebiasHead

    enc_path, emb_dir, _ = encoder_and_embeddings
    torch.manual_seed(0)
    head = DebiasHead(16, 8)
    torch.nn.init.normal_(head.net.fc2.weight)
    export_debias(head, DebiasConfig(hidden=8), 16, tmp_path / "debias.pt")
    out = export_artifacts(
        enc_path, emb_dir, tmp_path / "x", IndexConfig(kind="flat"), tmp_path / "debias.pt"
    )
    _, v = read_embeddings(emb_dir / "items.parquet")
    want = debias_transform(tmp_path / "debias.pt")(v)
    assert np.abs(want - v).max() > 1e-2  # the transform is not the identity
    with torch.no_grad():
        served = _ts_load(out / "debias.ts")(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(served, want, atol=1e-5)
    index = faiss.read_index(str(out / "index.faiss"))
    np.testing.assert_allclose(index.reconstruct_n(0, len(v)), want, atol=1e-6)


def test_export_with_an_exposure_aware_head_indexes_items_by_id(encoder_and_embeddings, tmp_path):
    """An exposure-aware gate: the index holds each item through its own bucket (by id)
    and ``debias.ts`` serves the query side (the query row)."""
    import faiss

    from visctr.embeddings import read_embeddings
    from visctr.s3.artifact import debias_transform, export_debias
    from visctr.s3.config import DebiasConfig
    from visctr.s3.net import DebiasHead

    enc_path, emb_dir, _ = encoder_and_embeddings
    ids, v = read_embeddings(emb_dir / "items.parquet")
    torch.manual_seed(0)
    head = DebiasHead(16, 8, n_buckets=4)
    torch.nn.init.normal_(head.net.fc2.weight)
    torch.nn.init.normal_(head.exposure.weight, std=3.0)
    buckets = np.arange(len(ids)) % 4
    export_debias(head, DebiasConfig(hidden=8), 16, tmp_path / "debias.pt", ids, buckets)
    out = export_artifacts(
        enc_path, emb_dir, tmp_path / "x", IndexConfig(kind="flat"), tmp_path / "debias.pt"
    )
    t = debias_transform(tmp_path / "debias.pt")
    want = t.items(v, ids)
    with torch.no_grad():
        by_row = torch.nn.functional.normalize(
            head(torch.from_numpy(v), torch.from_numpy(buckets)), dim=-1
        ).numpy()
    np.testing.assert_allclose(want, by_row, atol=1e-6)
    index = faiss.read_index(str(out / "index.faiss"))
    np.testing.assert_allclose(index.reconstruct_n(0, len(v)), want, atol=1e-6)
    with torch.no_grad():
        served = _ts_load(out / "debias.ts")(torch.from_numpy(v)).numpy()
    np.testing.assert_allclose(served, t.queries(v), atol=1e-5)
    assert np.abs(served - want).max() > 1e-2  # queries are not mapped as items


# ---- input types, ONNX, warnings ----------------------------------------------------------


def _ts_load(path):
    from visctr.serve.export import _jit_load

    return _jit_load(path)


@pytest.fixture(scope="module")
def flat_export(encoder_and_embeddings, tmp_path_factory):
    enc_path, emb_dir, _ = encoder_and_embeddings
    return export_artifacts(
        enc_path, emb_dir, tmp_path_factory.mktemp("ts") / "export", IndexConfig(kind="flat")
    )


def test_torchscript_takes_uint8_and_float_images_alike(encoder_and_embeddings, flat_export):
    """A uint8 image (0..255) and the same image as float in [0, 1] give one embedding:
    the float one is not divided by 255 a second time."""
    enc_path, _, world = encoder_and_embeddings
    ts = _ts_load(flat_export / "encoder.ts")
    u8 = torch.from_numpy(np.asarray(world.item_images[:16]))
    ref = torch.nn.functional.normalize(load_encoder(enc_path)(u8), dim=1)
    with torch.no_grad():
        from_u8 = ts(u8)
        from_float = ts(u8.float() / 255.0)
        from_double = ts(u8.double() / 255.0)
    torch.testing.assert_close(from_u8, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(from_float, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(from_double, ref, atol=1e-5, rtol=1e-4)
    assert from_float.dtype == torch.float32


@pytest.mark.parametrize(
    "bad, says",
    [
        (lambda u8: u8.float(), "float images must be in [0, 1]"),  # 0..255 as float
        (lambda u8: (u8.float() / 255 - 0.5) / 0.25, "float images must be in [0, 1]"),
        (lambda u8: u8.long(), "must be uint8 (0..255) or float in [0, 1], not integers"),
    ],
)
def test_torchscript_refuses_wrongly_scaled_images(encoder_and_embeddings, flat_export, bad, says):
    _, _, world = encoder_and_embeddings
    ts = _ts_load(flat_export / "encoder.ts")
    u8 = torch.from_numpy(np.asarray(world.item_images[:4]))
    with pytest.raises(Exception, match=re.escape(says)):
        ts(bad(u8))


def test_search_and_export_print_no_deprecation_warning(encoder_and_embeddings, tmp_path):
    """``visctr export`` and ``visctr search`` load and write TorchScript without torch's
    ``torch.jit`` deprecation notice (silenced for those calls only, see _torchscript)."""
    enc_path, emb_dir, world = encoder_and_embeddings
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[3, 0])).save(png)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = export_artifacts(enc_path, emb_dir, tmp_path / "e", IndexConfig(kind="flat"))
        res = CliRunner().invoke(main, ["search", "--export", str(out), "--image", str(png)])
    assert res.exit_code == 0, res.output
    noisy = [str(w.message) for w in seen if "deprecated" in str(w.message).lower()]
    assert noisy == []
    # the filter is narrow: torch.jit's notice still shows outside visctr's own calls
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.jit.load(str(out / "encoder.ts"))
    assert any("torch.jit.load" in str(w.message) for w in seen)


def test_onnx_runtime_reproduces_the_pytorch_embeddings(encoder_and_embeddings, tmp_path):
    """``export --onnx``: ONNX Runtime on encoder.onnx / debias.onnx gives the PyTorch
    embeddings and debiased vectors (any batch size)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from visctr.s3.artifact import debias_transform, export_debias
    from visctr.s3.config import DebiasConfig
    from visctr.s3.net import DebiasHead

    enc_path, emb_dir, world = encoder_and_embeddings
    torch.manual_seed(0)
    head = DebiasHead(16, 8)
    torch.nn.init.normal_(head.net.fc2.weight)
    export_debias(head, DebiasConfig(hidden=8), 16, tmp_path / "debias.pt")
    out = export_artifacts(
        enc_path, emb_dir, tmp_path / "x", IndexConfig(kind="flat"), tmp_path / "debias.pt", True
    )
    meta = json.loads((out / "export.json").read_text())
    assert meta["files"] == ["encoder.ts", "encoder.onnx", "debias.ts", "debias.onnx"]
    images = np.asarray(world.item_images[:37]).astype(np.float32) / 255.0
    sess = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": images})[0]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(load_encoder(enc_path)(torch.from_numpy(images)), dim=1)
    diff = float(np.abs(got - ref.numpy()).max())
    print(f"encoder.onnx vs PyTorch: max abs diff {diff:.2e} over {images.shape}")
    assert diff < 1e-5
    vec = ref.numpy()
    dsess = ort.InferenceSession(str(out / "debias.onnx"), providers=["CPUExecutionProvider"])
    dgot = dsess.run(None, {"vectors": vec})[0]
    dref = debias_transform(tmp_path / "debias.pt")(vec)
    assert np.abs(dref - vec).max() > 1e-2  # not the identity
    ddiff = float(np.abs(dgot - dref).max())
    print(f"debias.onnx vs PyTorch: max abs diff {ddiff:.2e}")
    assert ddiff < 1e-5


def test_onnx_export_without_its_packages_is_one_clear_error(
    encoder_and_embeddings, tmp_path, monkeypatch
):
    import importlib.util

    enc_path, emb_dir, _ = encoder_and_embeddings
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a)
    )
    res = CliRunner().invoke(
        main,
        [
            "export",
            "--encoder",
            str(enc_path),
            "--embeddings",
            str(emb_dir),
            "--onnx",
            "--out",
            str(tmp_path / "e"),
        ],  # fmt: skip
    )
    assert res.exit_code == 2
    # names onnxscript (and onnx too where that is not installed either, as in a bare venv)
    assert "ONNX export needs the" in res.output and "onnxscript package" in res.output
    assert not (tmp_path / "e").exists()


def test_search_answers_with_the_users_own_item_ids(encoder_and_embeddings, tmp_path):
    """Embeddings that carry ``item_key`` (a catalog of SKUs) give an export whose search
    results are those SKUs, read from the export folder alone."""
    import pyarrow.parquet as pq

    from visctr.embeddings import read_embeddings, write_embeddings

    enc_path, emb_dir, world = encoder_and_embeddings
    keyed = tmp_path / "emb"
    keyed.mkdir()
    ids, vecs = read_embeddings(emb_dir / "items.parquet")
    skus = np.asarray([f"sku-{i:05d}" for i in ids], dtype=object)
    write_embeddings(ids, vecs, keyed / "items.parquet", keys=skus)
    shutil.copy(emb_dir / "queries.parquet", keyed / "queries.parquet")
    assert pq.read_schema(keyed / "items.parquet").names == ["item_id", "item_key", "vector"]
    out = export_artifacts(enc_path, keyed, tmp_path / "export", IndexConfig(kind="flat"))
    png = tmp_path / "q.png"
    Image.fromarray(np.asarray(world.item_images[5, 0])).save(png)
    hits = search_image(out, png, k=3)
    assert hits[0][0] == f"sku-{int(world.items['item_id'][5]):05d}"
    res = CliRunner().invoke(main, ["search", "--export", str(out), "--image", str(png)])
    assert res.exit_code == 0 and f"item sku-{int(world.items['item_id'][5]):05d}" in res.output
    (out / "item_keys.json").write_text("[1, 2]")  # damaged: one line, no traceback
    res = CliRunner().invoke(main, ["search", "--export", str(out), "--image", str(png)])
    assert res.exit_code != 0 and "item_keys.json: expected a list of" in res.output


@pytest.fixture(scope="module")
def onnx_export(encoder_and_embeddings, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    enc_path, emb_dir, _ = encoder_and_embeddings
    out = tmp_path_factory.mktemp("onnx") / "export"
    return export_artifacts(enc_path, emb_dir, out, IndexConfig(kind="flat"), onnx=True)


def _onnx_session(export_dir):
    import onnxruntime as ort

    return ort.InferenceSession(
        str(export_dir / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )


@pytest.mark.precision
@pytest.mark.parametrize("cpu_bf16", ["0", "1"])
def test_embeddings_equal_the_exported_encoder_on_either_cpu_path(
    encoder_and_embeddings, flat_export, tmp_path, monkeypatch, cpu_bf16, request
):
    """``embed`` under ``precision: auto`` writes the vectors the exported fp32 encoder
    gives for the same images (encoder.ts, and encoder.onnx where ONNX Runtime is
    installed) to 1e-5, whether or not the CPU path is bf16 (``VISCTR_CPU_BF16``), and the
    file says ``32-true``."""
    from visctr.embeddings import read_embeddings, read_embeddings_meta

    monkeypatch.setenv("VISCTR_CPU_BF16", cpu_bf16)
    enc_path, _, world = encoder_and_embeddings
    embed(enc_path, world, tmp_path / "emb", device="cpu")  # precision: auto
    ids, vecs = read_embeddings(tmp_path / "emb" / "items.parquet")
    assert np.array_equal(ids, world.items["item_id"])
    images = np.asarray(world.item_images[world.items["image_row"]])
    with torch.no_grad():
        served = _ts_load(flat_export / "encoder.ts")(torch.from_numpy(images)).numpy()
    diff = float(np.abs(vecs - served).max())
    print(f"VISCTR_CPU_BF16={cpu_bf16}: items.parquet vs encoder.ts max |diff| {diff:.1e}")
    assert diff <= 1e-5
    assert read_embeddings_meta(tmp_path / "emb" / "items.parquet")["precision"] == "32-true"
    try:
        onnx_dir = request.getfixturevalue("onnx_export")
    except pytest.skip.Exception:
        return  # no ONNX Runtime here: the TorchScript half above still ran
    got = _onnx_session(onnx_dir).run(None, {"images": images.astype(np.float32) / 255.0})[0]
    assert float(np.abs(vecs - got).max()) <= 1e-5


@pytest.mark.precision
def test_bf16_embedding_is_asked_for_and_recorded(encoder_and_embeddings, tmp_path):
    from visctr.embeddings import read_embeddings, read_embeddings_meta

    enc_path, emb_dir, world = encoder_and_embeddings
    embed(enc_path, world, tmp_path / "emb", device="cpu", precision="bf16-mixed")
    path = tmp_path / "emb" / "items.parquet"
    assert read_embeddings_meta(path)["precision"] == "bf16-mixed"
    _, bf16 = read_embeddings(path)
    _, fp32 = read_embeddings(emb_dir / "items.parquet")
    assert 0 < float(np.abs(bf16 - fp32).max()) < 0.05  # bf16 really ran, and stays close
    with pytest.raises(Exception, match="precision must be auto, 32 or bf16-mixed"):
        embed(enc_path, world, tmp_path / "e16", device="cpu", precision="16-mixed")
    assert not (tmp_path / "e16").exists()


def test_embeddings_files_record_what_made_them(encoder_and_embeddings, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visctr.embeddings import read_embeddings_meta, write_embeddings
    from visctr.io import file_digest

    enc_path, emb_dir, _ = encoder_and_embeddings
    export = export_artifacts(enc_path, emb_dir, tmp_path / "x", IndexConfig(kind="flat"))
    prov = json.loads((export / "export.json").read_text())["provenance"]
    assert prov == {
        "encoder": file_digest(enc_path),
        "embeddings": file_digest(emb_dir / "items.parquet"),
        "debias": None,
    }
    for name in ("items.parquet", "queries.parquet"):
        meta = read_embeddings_meta(emb_dir / name)
        assert meta["format"] == "visctr-embeddings/1"
        assert meta["dim"] == "16" and meta["normalisation"] == "l2"
        assert meta["precision"] == "32-true"
        assert meta["encoder_digest"] == file_digest(enc_path)
        enc = json.loads(meta["encoder"])
        assert enc["file"] == "encoder.pt" and enc["backbone"] == "convnet"
        assert (enc["image_size"], enc["channels"]) == (28, 1)
        assert pq.read_schema(emb_dir / name).field("vector").type == pa.list_(pa.float32(), 16)
    # an empty file keeps its declared width; a file without provenance reads as {}
    write_embeddings(np.zeros(0, np.int64), [], tmp_path / "e.parquet", meta={"dim": 8})
    assert pq.read_schema(tmp_path / "e.parquet").field("vector").type == pa.list_(pa.float32(), 8)
    assert read_embeddings_meta(tmp_path / "e.parquet")["dim"] == "8"
    pq.write_table(pa.table({"item_id": [1]}), tmp_path / "other.parquet")
    assert read_embeddings_meta(tmp_path / "other.parquet") == {}
    # a copied encoder keeps its digest: it is of the bytes, not the name
    shutil.copy(enc_path, tmp_path / "copy.pt")
    assert file_digest(tmp_path / "copy.pt") == file_digest(enc_path)


def test_torchscript_refusal_names_the_values_it_found(flat_export):
    ts = _ts_load(flat_export / "encoder.ts")
    x = torch.full((1, 1, 28, 28), 0.25)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -0.75, 2.5
    with pytest.raises(Exception, match=re.escape("found values in [-0.75, 2.5]")):
        ts(x)


@pytest.mark.parametrize("scale", ["0..255", "mean/std"])
def test_onnx_encoder_refuses_wrongly_scaled_images(encoder_and_embeddings, onnx_export, scale):
    """encoder.onnx refuses float images outside [0, 1] as encoder.ts does: ONNX Runtime's
    error names the check; in-range images still embed."""
    from visctr.serve.export import ONNX_RANGE_ERROR

    _, _, world = encoder_and_embeddings
    sess = _onnx_session(onnx_export)
    u8 = np.asarray(world.item_images[:4]).astype(np.float32)
    ok = sess.run(None, {"images": u8 / 255.0})[0]
    assert np.allclose(np.linalg.norm(ok, axis=1), 1, atol=1e-5)
    bad = u8 if scale == "0..255" else (u8 / 255.0 - 0.5) / 0.1
    with pytest.raises(Exception, match=re.escape(ONNX_RANGE_ERROR)):
        sess.run(None, {"images": bad})


def test_export_refuses_embeddings_of_another_encoder(encoder_and_embeddings, tmp_path):
    """Embeddings another encoder made (its digest in their metadata), or of another width,
    are one line naming both files, exit 2, and no export folder."""
    from visctr.embeddings import read_embeddings, write_embeddings

    enc_path, emb_dir, _ = encoder_and_embeddings
    torch.manual_seed(1)
    cfg = EncoderConfig(width=8, stages=2, blocks=1, embed_dim=16)
    other = build_encoder(cfg, 1, 28).eval()
    save_encoder(tmp_path / "other.pt", other, encoder_spec(other, cfg, 1, 28))
    ids, vecs = read_embeddings(emb_dir / "items.parquet")
    wide = tmp_path / "wide"
    wide.mkdir()
    write_embeddings(ids, np.tile(vecs, 2) / np.sqrt(2), wide / "items.parquet")
    for encoder, emb, says in (
        (tmp_path / "other.pt", emb_dir, "was made by another encoder than"),
        (enc_path, wide, "has 32-d vectors but"),
    ):
        out = tmp_path / f"x-{encoder.stem}-{emb.name}"
        args = ["export", "--encoder", str(encoder), "--embeddings", str(emb), "--out", str(out)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert says in line and str(encoder) in line and "items.parquet" in line
        assert "\n" not in line and not out.exists()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_search_reads_a_phone_photo_upright(
    encoder_and_embeddings, flat_export, orientation, tmp_path
):
    """A photo stored turned or mirrored with an EXIF orientation tag (as phones store
    them) finds what the upright photo finds, with the same scores."""
    T = Image.Transpose
    store = [None, T.FLIP_LEFT_RIGHT, T.ROTATE_180, T.FLIP_TOP_BOTTOM, T.TRANSPOSE, T.ROTATE_90]
    store += [T.TRANSVERSE, T.ROTATE_270]  # what a camera does under tags 1..8
    _, _, world = encoder_and_embeddings
    im = Image.fromarray(np.asarray(world.item_images[7, 0]))
    im.save(tmp_path / "upright.png")
    stored = im if orientation == 1 else im.transpose(store[orientation - 1])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "phone.png", exif=exif.tobytes())  # lossless: exact scores
    assert search_image(flat_export, tmp_path / "phone.png", k=5) == search_image(
        flat_export, tmp_path / "upright.png", k=5
    )
