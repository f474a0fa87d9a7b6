"""Embedding files: ``item_id``/``query_id`` + ``vector`` Parquet (docs/world-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visctr.errors import InputError


def write_embeddings(
    ids: np.ndarray, vectors: np.ndarray, path: str | Path, id_column: str = "item_id"
) -> None:
    """Write ``id_column`` int64 + ``vector`` fixed_size_list<float32> atomically."""
    import pyarrow as pa

    from visctr.io import write_parquet

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.ravel(), pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    write_parquet(pa.table({id_column: pa.array(np.asarray(ids), pa.int64()), "vector": vec}), path)


def read_embeddings(path: str | Path, id_column: str = "item_id") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids int64 [N], vectors float32 [N, D])``: unique ids, finite vectors of one
    width, writable C-contiguous memory. Errors name the file and the field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: embeddings file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: unreadable Parquet ({e})") from None
    for col in (id_column, "vector"):
        if col not in table.column_names:
            raise InputError(f"{path}: missing column {col!r}")
    ids = table.column(id_column).to_numpy()
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
    """Rows of ``vectors`` for the ``wanted`` ids, in that order; error if any is missing."""
    sorter = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, wanted, sorter=sorter)
    pos = np.clip(pos, 0, len(ids) - 1)
    found = ids[sorter[pos]] == wanted if len(ids) else np.zeros(len(wanted), bool)
    if not found.all():
        missing = wanted[~found]
        raise InputError(f"{path}: {len(missing)} {what}s are missing (first: {missing[0]})")
    return vectors[sorter[pos]]
