"""Embedding files: ``item_id``/``query_id`` + ``vector`` Parquet (docs/world-format.md),
with the user's own ids beside them (``item_key``/``query_key``) when the world has them.

``vector`` is ``fixed_size_list<float32>[D]``. The file's schema metadata says what made
it, under ``visctr.*`` keys (strings): ``format``, ``dim`` and, from ``visctr embed``,
``encoder`` (JSON: backbone, stage, seed, image size, channels), ``encoder_digest`` (of
the ``encoder.pt`` bytes), ``normalisation`` (``l2``) and ``precision`` (``32-true`` unless
bf16 was asked for). :func:`read_embeddings_meta` reads them back.

The one reader and the one writer of these files (encoder export, tests, benchmarks).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from visctr.errors import InputError
from visctr.ids import IdIndex

ROW_GROUP = 65_536  # rows per Parquet row group when writing
FORMAT = "visctr-embeddings/1"
META_PREFIX = "visctr."


def write_embeddings(
    ids: np.ndarray,
    vectors: np.ndarray | Iterable[np.ndarray],
    path: str | Path,
    id_column: str = "item_id",
    row_group: int = ROW_GROUP,
    keys: np.ndarray | None = None,
    meta: dict[str, str] | None = None,
) -> None:
    """Write ``id_column`` int64 + ``vector`` fixed_size_list<float32>[D] atomically, and
    with ``keys`` (the user's ids, strings or integers, one per id) a ``*_key`` column.

    ``meta``: provenance stored as ``visctr.<key>`` schema metadata beside ``format`` and
    ``dim`` (an empty file takes its width from ``meta["dim"]`` when given).

    ``vectors``: one array ``[N, D]``, or an iterable of ``[n_i, D]`` chunks (``ids`` in
    the same order), streamed to the file in row groups of ``row_group`` rows so that
    memory stays at one chunk. No chunk at all writes a valid empty file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visctr.io import atomic_path

    ids = np.asarray(ids)
    key_column = id_column.removesuffix("_id") + "_key"
    key_type = None
    if keys is not None:
        keys = np.asarray(keys)
        if len(keys) != len(ids):
            raise ValueError(f"{path}: {len(ids)} ids but {len(keys)} keys")
        key_type = pa.int64() if keys.dtype.kind in "iu" else pa.string()
    chunks = [vectors] if isinstance(vectors, np.ndarray) else vectors
    extra = {k: str(v) for k, v in (meta or {}).items()}

    def metadata(dim: int) -> dict[str, str]:
        return {
            f"{META_PREFIX}{k}": v for k, v in {"format": FORMAT, **extra, "dim": str(dim)}.items()
        }

    writer = None
    start = 0
    with atomic_path(path) as tmp:
        try:
            for chunk in chunks:
                vec = np.ascontiguousarray(chunk, dtype=np.float32)
                flat = pa.array(vec.reshape(-1), pa.float32())
                cols = {id_column: pa.array(ids[start : start + len(vec)], pa.int64())}
                if keys is not None:
                    part = keys[start : start + len(vec)]
                    cols[key_column] = pa.array(
                        part if key_type == pa.int64() else [str(k) for k in part], key_type
                    )
                cols["vector"] = pa.FixedSizeListArray.from_arrays(flat, vec.shape[1])
                table = pa.table(cols).replace_schema_metadata(metadata(vec.shape[1]))
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table, row_group_size=row_group)
                start += len(vec)
            if start != len(ids):
                raise ValueError(f"{path}: {len(ids)} ids but {start} vectors")
            if writer is None:  # no rows: still a valid, empty file
                fields = [(id_column, pa.int64())]
                if keys is not None:
                    fields.append((key_column, key_type))
                dim = int(extra.get("dim", 1))
                schema = pa.schema(
                    [*fields, ("vector", pa.list_(pa.float32(), dim))], metadata=metadata(dim)
                )
                pq.write_table(schema.empty_table(), tmp)
        finally:
            if writer is not None:
                writer.close()


def read_embeddings_meta(path: str | Path) -> dict[str, str]:
    """The ``visctr.*`` schema metadata of an embeddings file, without the prefix (empty
    for a file that another tool wrote)."""
    import pyarrow as pa

    from visctr.io import open_parquet

    path = Path(path)
    pf = open_parquet(path, "embeddings file")
    try:
        raw = pf.schema_arrow.metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: unreadable Parquet ({e})") from None
    out = {}
    for k, v in raw.items():
        key = k.decode("utf-8", "replace")
        if key.startswith(META_PREFIX):
            out[key.removeprefix(META_PREFIX)] = v.decode("utf-8", "replace")
    return out


def made_by(embeddings_dir: str | Path) -> str | None:
    """The digest of the encoder file that made an embeddings folder's vectors (``None``
    for files that do not record it: another tool's, or visctr's from before it did)."""
    return read_embeddings_meta(Path(embeddings_dir) / "items.parquet").get("encoder_digest")


def unknown_origin(embeddings_dir: str | Path, against: str) -> str | None:
    """One warning line when an embeddings folder's vectors do not record the encoder that
    made them (another tool's file, or visctr's from before it recorded it), so they cannot
    be checked against ``against`` (what the verb would check them with); ``None`` when
    they do."""
    path = Path(embeddings_dir) / "items.parquet"
    meta = read_embeddings_meta(path)
    if meta.get("encoder_digest"):
        return None
    what = (
        "has no visctr provenance metadata (written by another tool?)"
        if not meta
        else "does not record the encoder that made it"
    )
    return f"warning: {path} {what}: its vectors cannot be checked against {against}"


def check_trained_on(embeddings_dir: str | Path, trained_on: str | None, model: Path) -> None:
    """Refuse, in one line naming both files, embeddings made by another encoder than the
    one whose embeddings ``model`` (a CTR model or a debias head) was trained on, where
    both record it: their vectors are not what the model learned to read."""
    given = made_by(embeddings_dir) if trained_on is not None else None
    if given is not None and given != trained_on:
        raise InputError(
            f"{Path(embeddings_dir) / 'items.parquet'} was made by another encoder (digest "
            f"{given[:12]}) than the embeddings {model} was trained on ({trained_on[:12]}): "
            "pass the embeddings it was trained with, or retrain it"
        )


def read_embeddings(path: str | Path, id_column: str = "item_id") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids int64 [N], vectors float32 [N, D])``: unique ids, finite vectors of one
    width, writable C-contiguous memory. Errors name the file and the field."""
    import pyarrow as pa

    from visctr.io import open_parquet

    path = Path(path)
    pf = open_parquet(path, "embeddings file")
    try:
        table = pf.read()
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: unreadable Parquet ({e})") from None
    for col in (id_column, "vector"):
        if col not in table.column_names:
            raise InputError(f"{path}: missing column {col!r}")
    id_type = table.schema.field(id_column).type
    if not pa.types.is_integer(id_type) or pa.types.is_uint64(id_type):
        raise InputError(
            f"{path}: column {id_column!r} has type {id_type}, expected int64: the world's "
            f"internal ids (a shop's own ids travel as {id_column.replace('_id', '_key')})"
        )
    if table.column(id_column).null_count:
        raise InputError(f"{path}: column {id_column!r} has null values")
    ids = table.column(id_column).to_numpy().astype(np.int64)
    col = table.column("vector").combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.nonzero(lengths != lengths[0])[0][0])
            raise InputError(
                f"{path}: row {row}: 'vector' has {lengths[row]} values, expected {lengths[0]}"
            )
        vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
    else:
        raise InputError(f"{path}: column 'vector' must be a list of floats, got {col.type}")
    if len(ids) and vectors.shape[1] == 0:
        raise InputError(f"{path}: column 'vector' has width 0")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{path}: {id_column} {uniq[counts > 1][0]} appears more than once")
    # contiguous, writable float32 (torch.from_numpy needs writable memory)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not vectors.flags.writeable:
        vectors = vectors.copy()
    bad = ~np.isfinite(vectors).all(1)
    if bad.any():
        raise InputError(
            f"{path}: row {int(np.nonzero(bad)[0][0])} ({id_column}="
            f"{ids[np.nonzero(bad)[0][0]]}): 'vector' has NaN or inf"
        )
    return ids.astype(np.int64), vectors


def align(
    ids: np.ndarray,
    vectors: np.ndarray,
    wanted: np.ndarray,
    path: str | Path,
    what: str = "item_id",
) -> np.ndarray:
    """Rows of ``vectors`` (read from ``path``) for the ``wanted`` ids, in that order; an
    ``InputError`` naming the first id that ``path`` lacks."""
    rows = IdIndex(ids).rows(
        wanted, strict=True, what=what, path=path, hint=f"; {path} has no vector for them"
    )
    return vectors[rows]
