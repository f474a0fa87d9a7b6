"""Reading impression logs: open a Parquet file with its schema checked, and checked numpy
columns per record batch (errors name the file and the column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visctr.errors import InputError
from visctr.world.store import IMPRESSION_COLUMNS, check_columns

LOG_COLUMNS = ["query_id", "user_id", "item_id", "position", "clicked", "timestamp"]


def open_log(path: Path):
    """Open an impressions Parquet file and check its schema."""

    from visctr.io import open_parquet

    path = Path(path)
    pf = open_parquet(path, "impressions file")
    check_columns(pf.schema_arrow, IMPRESSION_COLUMNS, path)
    return pf


def log_columns(rb, path: Path, columns=LOG_COLUMNS) -> dict[str, np.ndarray]:
    """Numpy columns of one record batch of impressions, checked: no nulls, positions
    ``>= 0``, ``clicked`` in {0, 1}. Errors name the file and the column."""
    cols = {}
    for name in columns:
        arr = rb.column(name)
        if arr.null_count:
            raise InputError(
                f"{path}: column {name!r} has {arr.null_count} null/NaN values in a batch; "
                "impressions must be complete"
            )
        cols[name] = arr.to_numpy()
    if "position" in cols and cols["position"].size and cols["position"].min() < 0:
        raise InputError(
            f"{path}: column 'position' has negative values (minimum {cols['position'].min()})"
        )
    if "clicked" in cols and ((cols["clicked"] != 0) & (cols["clicked"] != 1)).any():
        bad = cols["clicked"][(cols["clicked"] != 0) & (cols["clicked"] != 1)][0]
        raise InputError(f"{path}: column 'clicked' must be 0 or 1, found {bad}")
    return cols
