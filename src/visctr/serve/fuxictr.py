"""Embeddings in FuxiCTR's ``pretrained_emb`` layout (``visctr export --format fuxictr``).

FuxiCTR's loader (``fuxictr.preprocess.tokenizer.load_pretrain_emb``) reads a Parquet file
with a column ``key`` (the feature's raw value) and a column ``value`` (the vector). The
vector column must be a *fixed-size* list of float32: polars turns that into a 2-D array,
while a variable-length list comes out as an array of objects and fails FuxiCTR's
``pretrain_dim`` check. Keys are strings, the user's own ids: ``item_key`` (``query_key``)
where the embeddings file has that column, else ``str(item_id)``. Declare the feature with
``dtype: str`` in FuxiCTR so its vocabulary and these keys compare equal (docs/serving.md).

Streamed row group by row group: memory is one row group, plus the set of keys seen (to
refuse duplicates, which FuxiCTR would resolve silently by keeping the last one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visctr.errors import InputError

# (visctr embeddings file, its int id column, its user-key column, the FuxiCTR file)
TABLES = (
    ("items.parquet", "item_id", "item_key", "item_emb.parquet"),
    ("queries.parquet", "query_id", "query_key", "query_emb.parquet"),
)


def _vectors(column, path: Path, first_row: int) -> np.ndarray:
    """A batch's ``vector`` column as float32 ``[n, D]``."""
    import pyarrow as pa

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.nonzero(lengths != lengths[0])[0][0])
            raise InputError(
                f"{path}: row {first_row + row}: 'vector' has {lengths[row]} values, expected "
                f"{lengths[0]}"
            )
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1)
    raise InputError(f"{path}: column 'vector' must be a list of floats, got {col.type}")


def _keys(batch, id_column: str, key_column: str, path: Path, first_row: int) -> list[str]:
    import pyarrow as pa

    names = batch.schema.names
    if key_column in names:
        keys = batch.column(names.index(key_column))
        if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            keys = keys.cast(pa.string())
        if keys.null_count:
            row = int(np.nonzero(keys.is_null().to_numpy(zero_copy_only=False))[0][0])
            raise InputError(f"{path}: row {first_row + row}: {key_column!r} is empty")
        return keys.to_pylist()
    ids = batch.column(names.index(id_column)).to_numpy(zero_copy_only=False)
    return [str(int(i)) for i in ids]


def convert_file(src: Path, dst: Path, id_column: str, key_column: str) -> tuple[int, int]:
    """Write ``src`` (visctr embeddings) as ``dst`` (``key``, ``value``); returns (rows,
    vector width)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visctr.io import atomic_path, open_parquet

    src = Path(src)
    pf = open_parquet(src, "embeddings file", " (write it with 'visctr embed')")
    names = pf.schema_arrow.names
    for col in (id_column, "vector"):
        if col not in names:
            raise InputError(f"{src}: missing column {col!r}")
    columns = [id_column, "vector", *([key_column] if key_column in names else [])]
    seen: set[str] = set()
    rows, width, writer = 0, None, None
    with atomic_path(dst) as tmp:
        try:
            for batch in pf.iter_batches(columns=columns):
                keys = _keys(batch, id_column, key_column, src, rows)
                vec = np.ascontiguousarray(
                    _vectors(batch.column(batch.schema.names.index("vector")), src, rows),
                    dtype=np.float32,
                )
                if width is None:
                    width = vec.shape[1]
                    if width == 0:
                        raise InputError(f"{src}: column 'vector' has width 0")
                elif vec.shape[1] != width:
                    raise InputError(
                        f"{src}: rows from {rows}: 'vector' has {vec.shape[1]} values, "
                        f"expected {width}"
                    )
                bad = ~np.isfinite(vec).all(1)
                if bad.any():
                    row = int(np.nonzero(bad)[0][0])
                    raise InputError(f"{src}: row {rows + row}: 'vector' has NaN or inf")
                for i, k in enumerate(keys):
                    if k in seen:
                        raise InputError(f"{src}: row {rows + i}: key {k!r} appears more than once")
                    seen.add(k)
                flat = pa.array(vec.reshape(-1), pa.float32())
                table = pa.table(
                    {
                        "key": pa.array(keys, pa.string()),
                        "value": pa.FixedSizeListArray.from_arrays(flat, width),
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += len(keys)
            if writer is None:  # no rows: a valid empty file
                schema = pa.schema([("key", pa.string()), ("value", pa.list_(pa.float32(), 1))])
                pq.write_table(schema.empty_table(), tmp)
        finally:
            if writer is not None:
                writer.close()
    return rows, width or 0


def export_fuxictr(embeddings_dir: Path, out: Path) -> dict[str, tuple[int, int]]:
    """``out/item_emb.parquet`` (and ``query_emb.parquet`` where the embeddings folder has
    queries) in FuxiCTR's ``pretrained_emb`` layout, written atomically as one folder;
    returns (rows, vector width) per file name."""
    from visctr.io import atomic_dir, check_out_dir

    embeddings_dir, out = Path(embeddings_dir), Path(out)
    check_out_dir(out, "export", (embeddings_dir,))
    if not (embeddings_dir / "items.parquet").is_file():
        raise InputError(
            f"{embeddings_dir / 'items.parquet'}: embeddings file not found (pass a "
            "'visctr embed' folder)"
        )
    written: dict[str, tuple[int, int]] = {}
    with atomic_dir(out, kind="export") as tmp:
        for src, id_col, key_col, dst in TABLES:
            if (embeddings_dir / src).is_file():
                written[dst] = convert_file(embeddings_dir / src, tmp / dst, id_col, key_col)
    return written
