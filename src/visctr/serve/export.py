"""``visctr export`` / ``visctr search``.

An export folder holds what a serving system needs and nothing that needs visctr's
training code: ``encoder.ts`` (TorchScript: uint8 images 0..255 or float images in [0, 1]
in, L2-normalised embeddings out), optionally ``debias.ts`` (the S3 debias network,
applied to query and item vectors), ``index.faiss`` over the (debiased) item vectors with
``item_ids.npy``, and ``export.json`` (image size, channels, index kind, files). With
``onnx=True`` the same two functions are also written as ``encoder.onnx`` (float32 images
in [0, 1]; images outside are refused, as by ``encoder.ts``) and ``debias.onnx``, for ONNX
Runtime, TensorRT or Triton.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visctr.errors import InputError


@dataclass
class IndexConfig:
    """FAISS index for serving: exact ``flat``, ``ivf`` (IVF-Flat) or ``hnsw``."""

    kind: str = "hnsw"
    nlist: int = 0  # IVF lists; 0 = about 4·sqrt(N)
    nprobe: int = 8
    hnsw_m: int = 32
    ef_search: int = 64


# float images outside this range are refused: a 0..255 float image or one already
# normalised with a mean/std would otherwise give wrong embeddings without a word (the
# margin around [0, 1] lets resampling overshoot through)
FLOAT_RANGE = (-0.5, 1.5)


class _Normalised(nn.Module):
    """The encoder on float images in [0, 1], L2-normalised: what is traced and exported."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.encoder(x), dim=1)


class ServedEncoder(nn.Module):
    """``encoder.ts``: uint8 images (0..255) or float images in [0, 1] → embeddings.

    Scripted, not traced: a trace records the branch its example took, so a trace made
    with a uint8 example divides float images by 255 a second time. The branch on the
    dtype stays in the scripted code; the float core below it is traced."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core
        self.lo, self.hi = FLOAT_RANGE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif x.is_floating_point():
            x = x.float()
            lo, hi = float(x.min()), float(x.max())
            if lo < self.lo or hi > self.hi:
                # TorchScript's str.format ignores format specs ({:.3f}): round by hand
                lo, hi = round(lo * 1000.0) / 1000.0, round(hi * 1000.0) / 1000.0
                found = "[" + str(lo) + ", " + str(hi) + "]"
                raise ValueError(
                    "encoder.ts: float images must be in [0, 1], found values in "
                    + found
                    + "; pass uint8 images for 0..255"
                )
        else:
            raise ValueError(
                "encoder.ts: images must be uint8 (0..255) or float in [0, 1], not integers "
                "of another type"
            )
        return self.core(x)


# the ONNX graph's refusal of out-of-range float images (see _RangeChecked)
ONNX_RANGE_ERROR = (
    "encoder.onnx: float images must be in [0, 1]; pass uint8 images (0..255) divided by 255"
)


class _RangeChecked(nn.Module):
    """``encoder.onnx``: the float core, refusing images outside ``FLOAT_RANGE``.

    ONNX has no raise, so the check is a Gather from a one-element zero buffer at index 0
    (in range: adds 0) or far out of bounds (out of range), which every runtime refuses;
    :func:`_name_range_check` gives that node :data:`ONNX_RANGE_ERROR` as its name, and
    ONNX Runtime's error names the node."""

    OUT_OF_BOUNDS = 1 << 30

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core
        self.lo, self.hi = FLOAT_RANGE
        self.register_buffer("range_guard", torch.zeros(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = ((x < self.lo) | (x > self.hi)).any()
        index = bad.to(torch.int64).reshape(1) * self.OUT_OF_BOUNDS
        return self.core(x) + self.range_guard.index_select(0, index)


def _name_range_check(path: Path) -> None:
    """Name the Gather of :class:`_RangeChecked` in the ONNX file at ``path`` after what it
    refuses; an export whose graph lost the check fails here rather than ship without it."""
    import onnx

    model = onnx.load(str(path))
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "range_guard"]
    if len(gathers) != 1:
        raise RuntimeError(f"{path}: the input range check is not in the exported graph")
    gathers[0].name = ONNX_RANGE_ERROR
    onnx.save(model, str(path))


_INPUTS = {
    "encoder.ts": "images [N, C, H, W]: uint8 0..255 or float in [0, 1]",
    "encoder.onnx": "images [N, C, H, W]: float32 in [0, 1] (others are refused)",
    "debias.ts": "vectors [N, D]: float32, L2-normalised (encoder output)",
    "debias.onnx": "vectors [N, D]: float32, L2-normalised (encoder output)",
}


@contextlib.contextmanager
def _torchscript() -> Iterator[None]:
    """Silence torch's deprecation notice of the ``torch.jit`` entry points, only that
    message and only around visctr's own calls.

    Why TorchScript stays: ``encoder.ts`` is what a libtorch (C++) server or any Python
    with torch loads without visctr; torch.export's ``.pt2`` does not replace it there yet
    (a C++ process needs AOTInductor compilation to run one). torch 2.14 prints a
    FutureWarning on every ``torch.jit.trace/script/load`` call, i.e. on every ``visctr
    search``; it is about torch's roadmap, not about the user's input. ``encoder.onnx``
    (``export --onnx``) is the portable format that is not deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
        )
        yield


def _check_onnx_available() -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"ONNX export needs the {' and '.join(missing)} package(s): "
            "pip install 'visctr[onnx]' (or export without --onnx)"
        )


def _onnx_export(module: nn.Module, example: torch.Tensor, path: Path, names: tuple[str, str]):
    """``module`` (batch dimension dynamic) to an ONNX file through torch's dynamo exporter."""
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            dynamo=True,
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )


def build_index(vectors: np.ndarray, cfg: IndexConfig):
    """A FAISS inner-product index over L2-normalised ``vectors``."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "ivf":
        nlist = cfg.nlist or max(1, int(4 * np.sqrt(len(x))))
        nlist = min(nlist, len(x))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(cfg.nprobe, nlist)
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
    else:
        raise InputError(f"index kind must be flat, ivf or hnsw, got {cfg.kind!r}")
    index.add(x)
    return index


def export_artifacts(
    encoder_path: Path,
    embeddings_dir: Path,
    out: Path,
    index_cfg: IndexConfig | None = None,
    debias_path: Path | None = None,
    onnx: bool = False,
) -> Path:
    """Write the serving folder ``out`` atomically; returns it.

    ``onnx``: also write ``encoder.onnx`` (and ``debias.onnx``); needs the ``onnx`` extra."""
    import faiss

    from visctr.embeddings import read_embeddings
    from visctr.encoders import load_encoder
    from visctr.encoders.checkpoint import read_encoder_file
    from visctr.io import atomic_dir, check_out_dir, file_digest, write_json

    check_out_dir(out, "export", (encoder_path, embeddings_dir, debias_path))
    if onnx:
        _check_onnx_available()
    index_cfg = index_cfg or IndexConfig()
    spec = read_encoder_file(encoder_path)["config"]
    encoder = load_encoder(encoder_path)
    c, s = int(spec["in_channels"]), int(spec["image_size"])
    example = torch.rand(2, c, s, s, generator=torch.Generator().manual_seed(0))
    items_path = Path(embeddings_dir) / "items.parquet"
    item_ids, vectors = read_embeddings(items_path)
    encoder_digest = _check_pair(encoder_path, encoder.embed_dim, items_path, vectors.shape[1])
    keys = _item_keys(items_path)
    files = ["encoder.ts"]
    with atomic_dir(out, kind="export") as tmp:
        core = _Normalised(encoder).eval()
        with torch.no_grad(), _torchscript():
            served = torch.jit.script(ServedEncoder(torch.jit.trace(core, example)))
            served.save(str(tmp / "encoder.ts"))
        if onnx:
            path = tmp / "encoder.onnx"
            _onnx_export(_RangeChecked(core), example, path, ("images", "embeddings"))
            _name_range_check(path)
            files.append("encoder.onnx")
        if debias_path is not None:
            from visctr.s3.artifact import debias_transform

            # one function for the served query side (traced) and the indexed item side;
            # an exposure-aware gate reads the query row there and each item's bucket here
            transform = debias_transform(debias_path)
            transform.check_embeddings(embeddings_dir)
            v_example = torch.zeros(2, vectors.shape[1])
            with torch.no_grad(), _torchscript():
                d_traced = torch.jit.trace(transform.query_module, v_example)
                d_traced.save(str(tmp / "debias.ts"))
            files.append("debias.ts")
            if onnx:
                _onnx_export(
                    transform.query_module, v_example, tmp / "debias.onnx", ("vectors", "debiased")
                )
                files.append("debias.onnx")
            vectors = transform.items(vectors, item_ids)
        index = build_index(vectors, index_cfg)
        faiss.write_index(index, str(tmp / "index.faiss"))
        np.save(tmp / "item_ids.npy", item_ids)
        if keys is not None:  # your ids, in index order: what search answers with
            write_json(keys, tmp / "item_keys.json")
        write_json(
            {
                "format": "visctr-serving/1",
                "image_size": s,
                "channels": c,
                "dim": int(vectors.shape[1]),
                "items": int(len(item_ids)),
                "index": {
                    "kind": index_cfg.kind,
                    "nprobe": index_cfg.nprobe,
                    "ef_search": index_cfg.ef_search,
                },
                "debias": debias_path is not None,
                "item_keys": keys is not None,
                "provenance": {  # sha256 (32 hex) of the files this export was made from
                    "encoder": encoder_digest,
                    "embeddings": file_digest(items_path),
                    "debias": file_digest(debias_path) if debias_path is not None else None,
                },
                "files": files,
                "inputs": {f: _INPUTS[f] for f in files},
            },
            tmp / "export.json",
        )
    return Path(out)


def _check_pair(encoder_path: Path, dim: int, items_path: Path, width: int) -> str:
    """The embeddings must be the encoder's: the same width, and, where the file records
    it, the digest of the encoder file that made them (one line naming both files).
    Returns the encoder file's digest."""
    from visctr.embeddings import read_embeddings_meta
    from visctr.io import file_digest

    if width != dim:
        raise InputError(
            f"{items_path} has {width}-d vectors but {encoder_path} makes {dim}-d ones: "
            "they are not this encoder's embeddings (run 'visctr embed' with it)"
        )
    made_by = read_embeddings_meta(items_path).get("encoder_digest")
    digest = file_digest(encoder_path)
    if made_by is not None and made_by != digest:
        raise InputError(
            f"{items_path} was made by another encoder than {encoder_path} (digest "
            f"{made_by[:12]} vs {digest[:12]}): run 'visctr embed' with it"
        )
    return digest


def _item_keys(path: Path) -> list | None:
    """The embeddings file's ``item_key`` column (the user's ids) as a list, if it has one."""
    import pyarrow.parquet as pq

    if "item_key" not in pq.read_schema(path).names:
        return None
    return pq.read_table(path, columns=["item_key"]).column("item_key").to_pylist()


def search_image(export_dir: Path, image: Path, k: int = 10) -> list[tuple[int | str, float]]:
    """Top-``k`` ``(item_id, score)`` for one photo, using only the export folder; the id
    is the user's own (``item_keys.json``) when the export has one."""
    import faiss

    from visctr.data.catalog import decode_image

    export_dir = Path(export_dir)
    meta_path = export_dir / "export.json"
    if not meta_path.is_file():
        raise InputError(
            f"{export_dir}: not an export folder (no export.json); run 'visctr export' first"
        )
    try:
        meta = json.loads(meta_path.read_bytes())
    except ValueError as e:
        raise InputError(f"{meta_path}: not valid JSON ({e}); rerun 'visctr export'") from None
    from visctr.io import field, load_npy

    size = field(meta, "image_size", meta_path, int, lo=8, hi=4096)
    channels = field(meta, "channels", meta_path, int, lo=1, hi=64)
    debias = field(meta, "debias", meta_path, bool)
    for name in ("encoder.ts", "index.faiss", "item_ids.npy", *(["debias.ts"] if debias else [])):
        if not (export_dir / name).is_file():
            raise InputError(f"{export_dir / name}: missing; rerun 'visctr export'")
    img = decode_image(Path(image), size, channels)
    encoder = _jit_load(export_dir / "encoder.ts")
    with torch.no_grad():
        q = encoder(torch.from_numpy(img[None].copy()))
        if debias:
            q = _jit_load(export_dir / "debias.ts")(q)
    try:
        index = faiss.read_index(str(export_dir / "index.faiss"))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1][:200] if str(e).strip() else "unreadable"
        raise InputError(f"{export_dir / 'index.faiss'}: not a FAISS index ({msg})") from None
    ids = load_npy(export_dir / "item_ids.npy", mmap=False)
    if ids.ndim != 1 or ids.shape[0] != index.ntotal or ids.dtype.kind not in "iu":
        raise InputError(
            f"{export_dir / 'item_ids.npy'}: expected {index.ntotal} integer ids, found "
            f"{ids.dtype} {list(ids.shape)}; rerun 'visctr export'"
        )
    names = [int(i) for i in ids]
    if "item_keys" in meta and field(meta, "item_keys", meta_path, bool):
        path = export_dir / "item_keys.json"
        try:
            names = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e}); rerun 'visctr export'") from None
        if not isinstance(names, list) or len(names) != len(ids):
            raise InputError(f"{path}: expected a list of {len(ids)} ids; rerun 'visctr export'")
    if index.d != q.shape[1]:
        raise InputError(
            f"{export_dir / 'index.faiss'} holds {index.d}-d vectors but "
            f"{export_dir / ('debias.ts' if debias else 'encoder.ts')} makes {q.shape[1]}-d ones: "
            "they are not from one export; rerun 'visctr export'"
        )
    scores, idx = index.search(q.numpy().astype(np.float32), k)
    return [(names[i], float(sc)) for i, sc in zip(idx[0], scores[0], strict=True) if i >= 0]


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    try:
        with _torchscript():
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else "unreadable"
        raise InputError(
            f"{path}: not a TorchScript module ({msg}); rerun 'visctr export'"
        ) from None
