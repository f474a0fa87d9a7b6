"""``visctr import``: a world directory from a shop's own catalog, queries and logs.

Inputs (CSV or Parquet; CSV is read as text, so ``01`` and ``1`` stay apart):

- catalog manifest: ``item_id, image_path, category`` (as for ``visctr run --catalog``)
- queries: ``query_id, image_path, user_id, timestamp``
- impressions: ``query_id, item_id, position, clicked`` [, ``timestamp``] [, ``propensity``:
  P(the logging policy shows that item at that position for that query), in (0, 1], when
  the shop's ranker logs it; the off-policy estimates weight by it]
- optional random-exposure impressions: the same schema, for queries of the queries file
- optional retrieval labels: ``query_id, image_path, item_id`` (a labelled query photo and
  the item it shows)

Ids may be strings or integers; they are kept as given (``item_key``, ``query_key``,
``user_key``) next to dense internal int64 ids (row numbers). Timestamps are ISO-8601 (a
time without a zone is UTC) or epoch integers in s/ms/us/ns (the unit read from their
magnitude, or given), within 1990..2100. Duplicate impression rows are refused (exact
copies dropped with ``dedupe``). Photos are decoded by
:func:`visctr.data.catalog.decode_image` (upright by EXIF, transparency on white). Logged queries are split into train
and test by time. The logs are streamed in record batches: memory holds the catalog and
the query table, never a whole log. Every error names the file, the row and the column,
and leaves no output (the world directory appears whole or not at all).
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from visctr.errors import InputError
from visctr.world.head_tail import head_mask
from visctr.world.store import PROPENSITY, store_digest

__all__ = ["ImportConfig", "import_world"]

QUERY_INPUT = ("query_id", "image_path", "user_id", "timestamp")
IMPRESSION_INPUT = ("query_id", "item_id", "position", "clicked")
IMPRESSION_OPTIONAL = ("timestamp", "propensity")
RETRIEVAL_INPUT = ("query_id", "image_path", "item_id")
_INT = re.compile(r"\s*[+-]?[0-9]+\s*")


@dataclass
class ImportConfig:
    """How files become a world: image size, the time split, the head share, batch rows."""

    image_size: int = 28
    channels: int = 1
    train_share: float = 0.8  # share of logged queries (by time) that are train
    split_time: int | None = None  # or: queries before this time (epoch seconds) are train
    head_share: float = 0.2
    batch_rows: int = 65_536  # rows per record batch when streaming a log
    workers: int | None = None  # processes decoding images (None: every core)
    timestamp_unit: str = "auto"  # of integer timestamps: auto (by magnitude), s, ms, us, ns
    dedupe: bool = False  # drop exact duplicate impression rows (else they are refused)
    inputs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.train_share < 1.0:
            raise InputError(f"train share must be in (0, 1), got {self.train_share}")
        if self.batch_rows < 1:
            raise InputError(f"batch rows must be >= 1, got {self.batch_rows}")
        from visctr.data.catalog import MAX_IMAGE_SIZE

        if not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise InputError(f"image size must be in 8..{MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"workers must be >= 1, got {self.workers}")
        if self.timestamp_unit != "auto" and self.timestamp_unit not in TIMESTAMP_UNITS:
            raise InputError(
                f"timestamp unit must be auto, s, ms, us or ns, got {self.timestamp_unit!r}"
            )


# --- reading -----------------------------------------------------------------------------


def _kind(path: Path) -> str:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InputError(f"{path}: unsupported file type {suffix!r} (use .csv or .parquet)")
    return suffix[1:]


def _check_columns(names: list[str], path: Path, required, optional=()) -> None:
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(
            f"{path}: missing column {missing[0]!r} (needs {', '.join(required)}"
            + (f"; optional {', '.join(optional)}" if optional else "")
            + ")"
        )
    extra = [c for c in names if c not in required and c not in optional]
    if extra:
        raise InputError(
            f"{path}: unexpected column {extra[0]!r} (columns are {', '.join(required)}"
            + (f", optional {', '.join(optional)}" if optional else "")
            + "; a misspelt name is caught here)"
        )


def _csv_header(path: Path) -> list[str]:
    with open(path, "rb") as f:
        head = f.readline()
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    text = text.lstrip("\ufeff").rstrip("\r\n")
    names = [c.strip() for c in next(csv.reader([text]), [])]
    for sep, name in ((";", "semicolons"), ("\t", "tabs")):
        if len(names) == 1 and sep in text:  # Excel's CSV in many locales, or a TSV
            raise InputError(
                f"{path}: row 0: the header {text[:80]!r} is separated by {name}, not commas; "
                "save the file as comma-separated CSV"
            )
    return names


def _arrow_error(path: Path, e: Exception) -> InputError:
    msg = str(e).splitlines()[0][:300]
    if "UTF8" in msg or "UTF-8" in msg:
        return InputError(f"{path}: not UTF-8 text ({msg}); save it as UTF-8")
    return InputError(f"{path}: unreadable ({msg})")


def stream_batches(path: Path, required, optional=(), batch_rows: int = 65_536) -> Iterator:
    """``(first row, RecordBatch)`` of a CSV (every column as text) or Parquet file, after
    checking its columns; memory holds one batch."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    kind = _kind(path)
    row = 0
    try:
        if kind == "csv":
            names = _csv_header(path)
            _check_columns(names, path, required, optional)
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=True,
                    null_values=[""],  # only an empty cell is missing: "NA" may be a SKU
                ),
            )
            for batch in reader:
                if batch.num_rows:
                    yield row, batch
                    row += batch.num_rows
        else:
            pf = pq.ParquetFile(path)
            _check_columns(pf.schema_arrow.names, path, required, optional)
            for batch in pf.iter_batches(batch_size=batch_rows):
                if batch.num_rows:
                    yield row, batch
                    row += batch.num_rows
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise _arrow_error(path, e) from None


def read_whole(path: Path, required, optional=()):
    """A small input (queries, retrieval labels) as one Arrow table."""
    import pyarrow as pa

    batches = [b for _, b in stream_batches(path, required, optional)]
    if not batches:
        raise InputError(f"{path}: no rows")
    return pa.Table.from_batches(batches)


def _no_nulls(col, path: Path, column: str, row0: int = 0, what: str = "") -> None:
    if col.null_count:
        import pyarrow.compute as pc

        row = row0 + int(pc.index(pc.is_null(col), True).as_py())
        raise InputError(f"{path}: row {row}: column {column!r} is empty{what}")


def key_strings(col, path: Path, column: str, row0: int = 0):
    """The ids of a column as Arrow strings (integers as their decimal text), for matching
    ids across files whatever each file's type; nulls and floats are errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _no_nulls(col, path, column, row0)
    t = col.type
    if pa.types.is_integer(t):
        return pc.cast(col, pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        s = pc.utf8_trim_whitespace(pc.cast(col, pa.string()))
        empty = pc.equal(pc.utf8_length(s), 0)
        if pc.any(empty).as_py():
            row = row0 + int(pc.index(empty, True).as_py())
            raise InputError(f"{path}: row {row}: column {column!r} is empty")
        return s
    raise InputError(
        f"{path}: column {column!r} must be strings or integers, got {t} (a float id would "
        "be truncated)"
    )


def user_keys(col, path: Path, column: str):
    """Keys as the user gave them: an integer column as int64, text as strings."""
    import pyarrow as pa
    import pyarrow.compute as pc

    s = key_strings(col, path, column)
    if pa.types.is_integer(col.type):
        if pa.types.is_uint64(col.type) and len(col) and pc.max(col).as_py() > 2**63 - 1:
            # beyond int64: kept as their decimal text, never wrapped to negative numbers
            return np.asarray(s.to_pylist(), dtype=object)
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    return np.asarray(s.to_pylist(), dtype=object)


def _unique_keys(keys, path: Path, column: str) -> None:
    import pyarrow.compute as pc

    counts = pc.value_counts(keys)
    dup = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(dup):
        value = dup[0]["values"].as_py()
        rows = np.flatnonzero(np.asarray(keys.to_pylist(), dtype=object) == value)
        raise InputError(f"{path}: row {int(rows[1])}: duplicate {column} {value!r}")


TIMESTAMP_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_UNIT_BOUNDS = (10**11, 10**14, 10**17)  # |value| below: s (< year 5138), ms, us; above: ns
EARLIEST = int(datetime(1990, 1, 1, tzinfo=UTC).timestamp())
LATEST = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())


def _date(seconds: int) -> str:
    try:
        d = np.datetime64(int(seconds), "s")
    except (OverflowError, ValueError):
        return "out of range"
    return "out of range" if np.isnat(d) else str(d) + "Z"


class TimestampReader:
    """int64 epoch seconds from one file's timestamp column, batch by batch.

    Integers are epoch seconds, milliseconds, microseconds or nanoseconds: ``unit="auto"``
    reads the unit from their magnitude (one unit per file: a row of another magnitude is
    an error), or ``unit`` says it. Text is integers or ISO-8601 (no zone = UTC). Every
    time must fall in 1990..2100 once converted (a wrong unit lands outside it)."""

    def __init__(self, path: Path, column: str = "timestamp", unit: str = "auto"):
        if unit != "auto" and unit not in TIMESTAMP_UNITS:
            raise InputError(f"timestamp unit must be auto, s, ms, us or ns, got {unit!r}")
        self.path, self.column, self.given = Path(path), column, unit
        self.unit: str | None = None if unit == "auto" else unit  # of the integers
        self.iso = False  # some times were ISO-8601 text or Arrow timestamps
        self.ints = False  # some times were epoch integers
        self.low, self.high = None, None  # the time range read, epoch seconds

    def describe(self) -> str:
        """What was read, for the one line that says so: e.g. ``epoch milliseconds (from
        their magnitude)``."""
        parts = []
        if self.ints:
            how = "given" if self.given != "auto" else "from their magnitude"
            parts.append(f"epoch {UNIT_NAMES[self.unit]} ({how})")
        if self.iso:
            parts.append("ISO-8601")
        return " and ".join(parts) or "none"

    def record(self) -> str | None:
        """The unit for ``world.json``: ``s|ms|us|ns``, ``iso``, or both as ``ms+iso``."""
        out = [u for u in (self.unit if self.ints else None, "iso" if self.iso else None) if u]
        return "+".join(out) or None

    def __call__(self, col, row0: int = 0) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        path, column = self.path, self.column
        _no_nulls(col, path, column, row0)
        t = col.type
        is_int = np.ones(len(col), dtype=bool)
        if pa.types.is_integer(t):
            raw = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
        elif pa.types.is_timestamp(t):
            if t.tz is None:
                col = pc.assume_timezone(col, "UTC")
            raw = np.asarray(pc.cast(col, pa.timestamp("s", tz="UTC")).cast(pa.int64()), np.int64)
            is_int[:] = False
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            try:  # fast path: all integers
                raw = np.asarray(pc.cast(pc.utf8_trim_whitespace(col), pa.int64()), np.int64)
            except pa.ArrowInvalid:
                raw = np.empty(len(col), dtype=np.int64)
                for i, v in enumerate(col.to_pylist()):
                    v = v.strip()
                    if _INT.fullmatch(v):
                        try:
                            raw[i] = int(v)
                        except OverflowError:
                            raise InputError(
                                f"{path}: row {row0 + i}: {column} {v!r} is out of range for an "
                                "epoch time"
                            ) from None
                        continue
                    try:
                        d = datetime.fromisoformat(v)
                    except ValueError:
                        raise InputError(
                            f"{path}: row {row0 + i}: {column} {v!r} is neither an epoch "
                            "integer nor ISO-8601 (e.g. 2026-01-31T12:00:00Z)"
                        ) from None
                    if d.tzinfo is None:
                        d = d.replace(tzinfo=UTC)
                    raw[i] = int(d.timestamp() // 1)
                    is_int[i] = False
        else:
            raise InputError(
                f"{path}: column {column!r} must be epoch integers or ISO-8601 text, got {t}"
            )
        self.iso = self.iso or not is_int.all()
        self.ints = self.ints or bool(is_int.any())
        out = raw.copy()
        if is_int.any():
            ints = raw[is_int]
            rows = np.flatnonzero(is_int)
            klass = np.searchsorted(_UNIT_BOUNDS, np.abs(ints), side="right")
            if self.given == "auto":
                units = list(TIMESTAMP_UNITS)
                if self.unit is None:
                    self.unit = units[int(klass[0])]
                off = klass != units.index(self.unit)
                if off.any():
                    j = int(np.flatnonzero(off)[0])
                    raise InputError(
                        f"{path}: row {row0 + int(rows[j])}: {column} {int(ints[j])} looks like "
                        f"epoch {UNIT_NAMES[units[int(klass[j])]]} where the rows before are "
                        f"{UNIT_NAMES[self.unit]}; give every row one unit, or set "
                        "--timestamp-unit"
                    )
            out[is_int] = ints // TIMESTAMP_UNITS[self.unit]
        bad = (out < EARLIEST) | (out >= LATEST)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            value = col[j].as_py()
            how = (
                f"read as epoch {UNIT_NAMES[self.unit]}" + (
                    " from its magnitude" if self.given == "auto" else "")
                if is_int[j] else "read as ISO-8601"
            )  # fmt: skip
            raise InputError(
                f"{path}: row {row0 + j}: {column} {value!r} is {_date(out[j])} ({how}), "
                "outside 1990..2100; check the unit (--timestamp-unit s|ms|us|ns)"
            )
        lo, hi = int(out.min()), int(out.max())
        self.low = lo if self.low is None else min(self.low, lo)
        self.high = hi if self.high is None else max(self.high, hi)
        return out


def parse_timestamps(
    col, path: Path, column: str = "timestamp", row0: int = 0, unit: str = "auto"
) -> np.ndarray:
    """int64 epoch seconds from integers (seconds, or ms/us/ns by magnitude or ``unit``) or
    ISO-8601 text (no zone = UTC); see :class:`TimestampReader`."""
    return TimestampReader(path, column, unit)(col, row0)


def _ints(col, path: Path, column: str, row0: int, low: int, high: int) -> np.ndarray:
    """Integers in ``low..high`` from an integer, boolean or text column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _no_nulls(col, path, column, row0)
    t = col.type
    if pa.types.is_boolean(t):
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    elif pa.types.is_integer(t):
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            values = np.asarray(pc.cast(pc.utf8_trim_whitespace(col), pa.int64()), np.int64)
        except pa.ArrowInvalid:
            text = col.to_pylist()
            bad = next(i for i, v in enumerate(text) if not _INT.fullmatch(v))
            raise InputError(
                f"{path}: row {row0 + bad}: {column} {text[bad]!r} is not an integer"
            ) from None
    else:
        raise InputError(f"{path}: column {column!r} must be integers, got {t}")
    bad = (values < low) | (values > high)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        rng = "0 or 1" if (low, high) == (0, 1) else f"{low}..{high}"
        raise InputError(f"{path}: row {row0 + i}: {column} {values[i]} is not {rng}")
    return values


def _lookup(keys, index, path: Path, column: str, row0: int, where: str) -> np.ndarray:
    """Rows of ``keys`` in the ``index`` key array; an unknown id is an error."""
    import pyarrow.compute as pc

    rows = pc.index_in(keys, value_set=index)
    if rows.null_count:
        i = int(pc.index(pc.is_null(rows), True).as_py())
        raise InputError(f"{path}: row {row0 + i}: {column} {keys[i].as_py()!r} is not in {where}")
    return np.asarray(rows.to_numpy(zero_copy_only=False), dtype=np.int64)


def _image_paths(table, path: Path) -> tuple[list[Path], list[str]]:
    root = path.parent.resolve()
    col = table.column("image_path")
    _no_nulls(col, path, "image_path", what=" (a query without an image)")
    paths, wheres = [], []
    for row, rel in enumerate(col.to_pylist()):
        rel = str(rel).strip()
        if not rel:
            raise InputError(f"{path}: row {row}: column 'image_path' is empty (no image)")
        p = (root / rel).resolve()
        if not p.is_relative_to(root):
            raise InputError(f"{path}: row {row}: image_path {rel!r} escapes the file's folder")
        paths.append(p)
        wheres.append(f"{path}: row {row}")
    return paths, wheres


# --- the world ---------------------------------------------------------------------------


class _LogWriter:
    """Streams impression batches of one split into ``impressions/<split>.parquet``."""

    def __init__(self, path: Path):
        self.path, self.writer, self.rows, self.clicks = path, None, 0, 0

    def write(self, cols: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from visctr.world.store import IMPRESSION_COLUMNS

        types = {"int64": pa.int64(), "int32": pa.int32(), "int8": pa.int8()}
        table = {c: pa.array(cols[c], types[t]) for c, t in IMPRESSION_COLUMNS.items()}
        if PROPENSITY in cols:  # every batch of one file has it or none does
            table[PROPENSITY] = pa.array(cols[PROPENSITY], pa.float64())
        table = pa.table(table)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        if table.num_rows:
            self.writer.write_table(table, row_group_size=262_144)
        self.rows += table.num_rows
        self.clicks += int(cols["clicked"].sum())

    def close(self) -> None:
        if self.writer is None:  # no rows: still a valid, empty file
            from visctr.world.store import IMPRESSION_COLUMNS

            self.write({c: np.zeros(0, np.int64) for c in IMPRESSION_COLUMNS})
        self.writer.close()


def _propensities(col, path: Path, row0: int) -> np.ndarray:
    """float64 propensities in (0, 1] from a numeric column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    _no_nulls(col, path, PROPENSITY, row0)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):  # CSV
        try:
            col = pc.cast(pc.utf8_trim_whitespace(col), pa.float64())
        except pa.ArrowInvalid:
            for i, v in enumerate(col.to_pylist()):
                try:
                    float(v)
                except ValueError:
                    raise InputError(
                        f"{path}: row {row0 + i}: propensity {v!r} is not a number"
                    ) from None
            raise
    elif not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise InputError(f"{path}: column {PROPENSITY!r} must be numbers, got {t}")
    p = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = ~(np.isfinite(p) & (p > 0) & (p <= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: row {row0 + i}: propensity {float(p[i])} is not in (0, 1] (P(the logging "
            "policy showed this item at this position))"
        )
    return p


POSITIONS_SHOWN = 10  # CTR by position: 0..9, then one bucket for 10 and beyond


KEY_DTYPE = np.dtype([("row", "<i8"), ("q", "<i8"), ("i", "<i8"), ("pos", "<i4"), ("clk", "i1")])
SPILL_BUCKETS = 64  # duplicate-check partitions (by query): memory holds one at a time


class _LogStats:
    """What one impression log holds, gathered while it streams: rows, clicks by position,
    items shown, queries served, and the keys that find duplicate rows.

    Every kind of duplicate shares its query, so the keys (29 bytes a row) are spilled to
    ``spill`` partitioned by query, and each partition is checked alone: memory holds one
    partition (~1/64 of the log), the disk holds the keys until the check is done."""

    def __init__(self, path: Path, n_items: int, n_queries: int, spill: Path | None):
        self.path = path
        self.rows = 0
        self.shown = np.zeros(n_items, dtype=bool)
        self.served = np.zeros(n_queries, dtype=bool)
        self.by_pos = np.zeros((2, POSITIONS_SHOWN + 1))  # impressions, clicks by position
        self.propensity = False
        self.spill = spill
        if spill is not None:
            spill.mkdir()

    def add(self, rows, q, i, pos, clicked) -> None:
        self.rows += len(q)
        self.shown[i] = True
        self.served[q] = True
        capped = np.minimum(pos, POSITIONS_SHOWN)
        self.by_pos[0] += np.bincount(capped, minlength=POSITIONS_SHOWN + 1)
        self.by_pos[1] += np.bincount(capped, weights=clicked, minlength=POSITIONS_SHOWN + 1)
        if self.spill is None:
            return
        keys = np.empty(len(q), dtype=KEY_DTYPE)
        keys["row"], keys["q"], keys["i"], keys["pos"], keys["clk"] = rows, q, i, pos, clicked
        bucket = q % SPILL_BUCKETS
        order = np.argsort(bucket, kind="stable")
        bounds = np.searchsorted(bucket[order], np.arange(SPILL_BUCKETS + 1))
        for k in range(SPILL_BUCKETS):
            part = keys[order[bounds[k] : bounds[k + 1]]]
            if len(part):
                with open(self.spill / f"{k}.bin", "ab") as f:
                    f.write(part.tobytes())

    def duplicates(self, keys_of, dedupe: bool) -> tuple[np.ndarray | None, dict, list[str]]:
        """``(sorted rows to drop or None, counts, problems)``: exact duplicate rows (same
        query, item, position and click) are dropped with ``dedupe`` and a problem without
        it; beyond those, the same item twice for one query, or two items at one position
        of one query, are problems. ``keys_of(q)`` names a query in messages. Removes the
        spilled keys."""
        counts = {"exact": 0, "item": 0, "position": 0}
        first: dict[str, tuple[int, int, int]] = {}  # kind -> (row b, its first copy a, q)
        drops = []
        for k in range(SPILL_BUCKETS):
            f = self.spill / f"{k}.bin"
            if not f.is_file():
                continue
            keys = np.fromfile(f, dtype=KEY_DTYPE)
            f.unlink()
            for kind, n, pair, dropped in _bucket_duplicates(keys):
                counts[kind] += n
                if pair is not None and (kind not in first or pair[0] < first[kind][0]):
                    first[kind] = pair
                if dropped is not None:
                    drops.append(dropped)
        self.spill.rmdir()
        path, problems = self.path, []
        if counts["exact"] and not dedupe:
            b, a, _ = first["exact"]
            problems.append(
                f"{path}: {counts['exact']:,} exact duplicate impression rows (same query_id, "
                f"item_id, position and clicked; first: rows {a} and {b}); a log joined twice? "
                "drop them with --dedupe"
            )
        for kind, what in (
            ("item", "the same item_id twice for one query"),
            ("position", "two items at one position of one query"),
        ):
            if counts[kind]:
                b, a, q = first[kind]
                problems.append(
                    f"{path}: {counts[kind]:,} rows with {what} (first: rows {a} and {b}, "
                    f"query_id {keys_of(q)!r}); give each result page its own query_id, or "
                    "keep one row per item and position"
                )
        drop = np.sort(np.concatenate(drops)) if drops and dedupe else None
        return drop, counts, problems


def _bucket_duplicates(keys: np.ndarray):
    """``(kind, count, (row, its first copy, query) of the earliest, rows dropped)`` for
    each kind of duplicate among ``keys`` (rows of one query partition)."""
    row, q, i, pos, clk = (keys[c] for c in ("row", "q", "i", "pos", "clk"))
    order = np.lexsort((row, clk, pos, i, q))  # equal keys: the earliest row first
    exact = np.logical_and.reduce([c[order][1:] == c[order][:-1] for c in (q, i, pos, clk)])
    drop_at = order[1:][exact]
    unique = np.ones(len(keys), dtype=bool)
    unique[drop_at] = False

    def earliest(dup_at: np.ndarray, cols, among: np.ndarray):
        if not len(dup_at):
            return None
        b = int(dup_at[np.argmin(row[dup_at])])
        same = among[np.logical_and.reduce([c[among] == c[b] for c in cols])]
        return int(row[b]), int(row[same].min()), int(q[b])

    idx = np.arange(len(keys))
    yield "exact", len(drop_at), earliest(drop_at, (q, i, pos, clk), idx), row[drop_at]
    rest = idx[unique]
    for kind, other in (("item", i), ("position", pos)):
        o = rest[np.lexsort((row[rest], other[rest], q[rest]))]
        same = (q[o][1:] == q[o][:-1]) & (other[o][1:] == other[o][:-1])
        dup_at = o[1:][same]
        yield kind, len(dup_at), earliest(dup_at, (q, other), rest), None


def _stream_log(
    path: Path,
    split_of_query,  # function: query rows -> split name per row (or raises)
    writers: dict[str, _LogWriter],
    query_index,
    item_index,
    q_users: np.ndarray,
    q_ts: np.ndarray,
    cfg: ImportConfig,
    on_rows=None,
    clock: TimestampReader | None = None,
    stats: _LogStats | None = None,
    drop: np.ndarray | None = None,
) -> int:
    """Validate and route one impression log, batch by batch (without the rows of ``drop``,
    sorted, when given). Returns its row count."""
    n = 0
    clock = clock or TimestampReader(path, unit=cfg.timestamp_unit)
    for row0, batch in stream_batches(path, IMPRESSION_INPUT, IMPRESSION_OPTIONAL, cfg.batch_rows):
        names = batch.schema.names
        q = _lookup(
            key_strings(batch.column("query_id"), path, "query_id", row0),
            query_index, path, "query_id", row0, "the queries file",
        )  # fmt: skip
        i = _lookup(
            key_strings(batch.column("item_id"), path, "item_id", row0),
            item_index, path, "item_id", row0, "the catalog",
        )  # fmt: skip
        pos = _ints(batch.column("position"), path, "position", row0, 0, 2**31 - 1)
        clicked = _ints(batch.column("clicked"), path, "clicked", row0, 0, 1)
        if "timestamp" in names:
            ts = clock(batch.column("timestamp"), row0)
        else:
            ts = q_ts[q]
        splits = split_of_query(q, row0)
        cols = {
            "query_id": q,
            "user_id": q_users[q],
            "item_id": i,
            "position": pos,
            "clicked": clicked,
            "timestamp": ts,
        }
        if PROPENSITY in names:
            cols[PROPENSITY] = _propensities(batch.column(PROPENSITY), path, row0)
        n += batch.num_rows
        rows = np.arange(row0, row0 + batch.num_rows, dtype=np.int64)
        if drop is not None:
            lo, hi = np.searchsorted(drop, [row0, row0 + batch.num_rows])
            m = np.ones(batch.num_rows, dtype=bool)
            m[drop[lo:hi] - row0] = False
            cols = {c: v[m] for c, v in cols.items()}
            splits, rows = splits[m], rows[m]
        if stats is not None:
            stats.add(rows, cols["query_id"], cols["item_id"], cols["position"], cols["clicked"])
            stats.propensity = PROPENSITY in names
        for name, w in writers.items():
            m = splits == name
            if m.any():
                w.write({c: v[m] for c, v in cols.items()})
        if on_rows is not None:
            on_rows(cols, splits)
    return n


def import_world(
    catalog: Path,
    queries: Path,
    impressions: Path,
    out: Path,
    random: Path | None = None,
    retrieval: Path | None = None,
    cfg: ImportConfig | None = None,
    echo=print,
    check: bool = False,
) -> dict:
    """Build a world directory at ``out`` from a shop's files; returns its summary.

    ``check``: a dry run. Every file is read and validated exactly as for the import (the
    same code, so the same errors), the world is built in a temporary folder that is then
    removed, and ``out`` is neither checked nor written (it may be ``None``). The summary
    then holds a ``check`` section (see :func:`format_check`); duplicates are reported
    there and raised after the screen is printed."""
    import tempfile

    import pyarrow as pa
    import pyarrow.compute as pc

    from visctr.data.catalog import CatalogConfig, load_catalog, read_images
    from visctr.io import atomic_dir, check_out_dir, write_json, write_parquet

    cfg = cfg or ImportConfig()
    t0 = time.perf_counter()
    catalog, queries, impressions = Path(catalog), Path(queries), Path(impressions)
    if not check:
        out = Path(out)
        check_out_dir(out, "world")
    if catalog.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"{catalog}: the catalog must be a .csv or .parquet manifest")
    ccfg = CatalogConfig(source=str(catalog), image_size=cfg.image_size, channels=cfg.channels)
    where = (
        tempfile.TemporaryDirectory(prefix="visctr-import-check-")
        if check
        else atomic_dir(out, kind="world")
    )
    problems: list[str] = []  # with check: what the import would refuse, said after the screen
    logs: dict[str, dict] = {}  # per log: stats, clock, duplicate counts
    with where as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        echo(f"catalog: {catalog}")
        cat = load_catalog(ccfg, images_out=tmp / "images" / "items.npy", workers=cfg.workers)
        n_items = len(cat)
        item_keys = cat.item_keys if cat.item_keys is not None else cat.item_ids
        item_index = pa.array([str(k) for k in item_keys], pa.string())

        # queries: in memory (one row per query, far fewer than impressions)
        echo(f"queries: {queries}")
        qt = read_whole(queries, QUERY_INPUT)
        q_keys_s = key_strings(qt.column("query_id"), queries, "query_id")
        _unique_keys(q_keys_s, queries, "query_id")
        q_keys = user_keys(qt.column("query_id"), queries, "query_id")
        u_col = qt.column("user_id")
        u_keys = user_keys(u_col, queries, "user_id")
        uniq_users, q_users = _dense(u_keys)
        q_clock = TimestampReader(queries, unit=cfg.timestamp_unit)
        q_ts = q_clock(qt.column("timestamp"))
        _say_times(echo, q_clock)
        q_paths, q_wheres = _image_paths(qt, queries)
        n_q = len(q_keys)

        # retrieval labels: their own photos, each labelled with the item it shows
        r_keys = np.zeros(0, dtype=object)
        r_targets = np.zeros(0, dtype=np.int64)
        r_paths: list[Path] = []
        r_wheres: list[str] = []
        if retrieval is not None:
            retrieval = Path(retrieval)
            echo(f"retrieval labels: {retrieval}")
            rt = read_whole(retrieval, RETRIEVAL_INPUT)
            rk = key_strings(rt.column("query_id"), retrieval, "query_id")
            _unique_keys(rk, retrieval, "query_id")
            clash = pc.is_in(rk, value_set=q_keys_s)
            if pc.any(clash).as_py():
                row = int(pc.index(clash, True).as_py())
                raise InputError(
                    f"{retrieval}: row {row}: query_id {rk[row].as_py()!r} is also in {queries} "
                    "(labelled retrieval photos are their own queries)"
                )
            r_keys = user_keys(rt.column("query_id"), retrieval, "query_id")
            r_targets = _lookup(
                key_strings(rt.column("item_id"), retrieval, "item_id"),
                item_index, retrieval, "item_id", 0, f"the catalog {catalog}",
            )  # fmt: skip
            r_paths, r_wheres = _image_paths(rt, retrieval)

        q_split = np.full(n_q, "", dtype=object)
        is_random = np.zeros(n_q, dtype=bool)
        train_counts = np.zeros(n_items, dtype=np.int64)
        shown_random = np.zeros(n_items, dtype=bool)
        summary_logs: dict[str, dict] = {}
        (tmp / "impressions").mkdir()
        query_index = q_keys_s

        def read_log(label: str, path: Path, split_fn, names, on_rows, reset) -> dict:
            """Stream one log into its split files; once more without exact duplicates when
            ``--dedupe`` finds some. Duplicates are refused (or, with check, gathered)."""

            def once(drop):
                reset()
                ws = {s: _LogWriter(tmp / "impressions" / f"{s}.parquet") for s in names}
                clock = TimestampReader(path, unit=cfg.timestamp_unit)
                spill = tmp / f".duplicate-keys-{label}" if drop is None else None
                st = _LogStats(path, n_items, n_q, spill)
                _stream_log(
                    path, split_fn, ws, query_index, item_index, q_users, q_ts, cfg, on_rows,
                    clock, st, drop,
                )  # fmt: skip
                for wr in ws.values():
                    wr.close()
                return ws, clock, st

            ws, clock, st = once(None)
            drop, counts, found = st.duplicates(lambda q: q_keys[q], cfg.dedupe)
            if found and not check:
                raise InputError(found[0])
            problems.extend(found)
            if drop is not None:
                ws, clock, st = once(drop)
                echo(f"{path}: dropped {counts['exact']:,} exact duplicate rows (--dedupe)")
            _say_times(echo, clock)
            logs[label] = {"stats": st, "clock": clock, "duplicates": counts}
            for s, wr in ws.items():
                summary_logs[s] = {"rows": wr.rows, "clicks": wr.clicks}
            return ws

        if random is not None:
            random = Path(random)
            echo(f"random-exposure log: {random}")

            def mark_random(q, row0):
                is_random[q] = True
                return np.full(len(q), "random", dtype=object)

            def seen_random(cols, splits):
                shown_random[cols["item_id"]] = True

            def forget_random():
                shown_random[:] = False

            read_log("random", random, mark_random, ("random",), seen_random, forget_random)
            q_split[is_random] = "random"

        logged = ~is_random
        if not logged.any():
            raise InputError(f"{queries}: every query is in the random-exposure log")
        if cfg.split_time is not None:
            cutoff = int(cfg.split_time)
        else:
            ts_sorted = np.sort(q_ts[logged])
            cutoff = int(ts_sorted[min(int(cfg.train_share * len(ts_sorted)), len(ts_sorted) - 1)])
        q_split[logged & (q_ts < cutoff)] = "train"
        q_split[logged & (q_ts >= cutoff)] = "test"

        echo(f"impressions: {impressions}")

        def logged_split(q, row0):
            bad = is_random[q]
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(
                    f"{impressions}: row {row0 + i}: query_id {q_keys[q[i]]!r} is also in the "
                    f"random-exposure log {random} (a query is logged or random, not both)"
                )
            return q_split[q]

        def count_train(cols, splits):
            train = splits == "train"
            train_counts[:] += np.bincount(cols["item_id"][train], minlength=n_items)

        def forget_train():
            train_counts[:] = 0

        read_log("impressions", impressions, logged_split, ("train", "test"), count_train,
                 forget_train)  # fmt: skip
        if summary_logs["train"]["rows"] == 0:
            raise InputError(
                f"{impressions}: no impressions before the split time {cutoff} (the train "
                "split is empty); lower --split-time or raise --train-share"
            )

        # tables
        echo(f"reading {n_q + len(r_paths):,} query photos")
        read_images(
            q_paths + r_paths, ccfg, q_wheres + r_wheres, tmp / "images" / "queries.npy",
            cfg.workers,
        )  # fmt: skip
        is_head = head_mask(train_counts, cfg.head_share)
        write_parquet(
            pa.table(
                {
                    "item_id": pa.array(np.arange(n_items), pa.int64()),
                    "item_key": _key_array(item_keys),
                    "category": pa.array(cat.categories, pa.int32()),
                    "image_row": pa.array(np.arange(n_items), pa.int64()),
                    "train_impressions": pa.array(train_counts, pa.int64()),
                    "is_head": pa.array(is_head, pa.bool_()),
                    **({"bid": pa.array(cat.bids, pa.float64())} if cat.bids is not None else {}),
                }
            ),
            tmp / "items.parquet",
        )
        write_parquet(
            pa.table(
                {
                    "user_id": pa.array(np.arange(len(uniq_users)), pa.int64()),
                    "user_key": _key_array(uniq_users),
                }
            ),
            tmp / "users.parquet",
        )
        n_r = len(r_paths)
        all_keys = np.concatenate([q_keys.astype(object), r_keys.astype(object)])
        if n_r and {type(k) for k in all_keys} != {type(all_keys[0])}:
            all_keys = np.asarray([str(k) for k in all_keys], dtype=object)
        write_parquet(
            pa.table(
                {
                    "query_id": pa.array(np.arange(n_q + n_r), pa.int64()),
                    "query_key": _key_array(all_keys if n_r else q_keys),
                    "user_id": pa.array(
                        np.concatenate([q_users, np.full(n_r, -1, np.int64)]), pa.int64()
                    ),
                    "target_item_id": pa.array(
                        np.concatenate([np.full(n_q, -1, np.int64), r_targets]), pa.int64()
                    ),
                    "timestamp": pa.array(
                        np.concatenate([q_ts, np.full(n_r, cutoff, np.int64)]), pa.int64()
                    ),
                    "split": pa.array([str(s) for s in q_split] + ["retrieval"] * n_r, pa.string()),
                    "image_row": pa.array(np.arange(n_q + n_r), pa.int64()),
                }
            ),
            tmp / "queries.parquet",
        )
        summary = {
            "items": n_items,
            "categories": cat.n_categories,
            "users": len(uniq_users),
            "queries": {
                "train": int((q_split == "train").sum()),
                "test": int((q_split == "test").sum()),
                "random": int(is_random.sum()),
                "retrieval": n_r,
            },
            "impressions": {s: v["rows"] for s, v in summary_logs.items()},
            "clicks": {s: v["clicks"] for s, v in summary_logs.items()},
            "ctr": {s: v["clicks"] / max(v["rows"], 1) for s, v in summary_logs.items()},
            "never_shown_share_train": float((train_counts == 0).mean()),
            "head_items": int(is_head.sum()),
            "tail_items": int(n_items - is_head.sum()),
            "head_share_of_train_impressions": float(
                train_counts[is_head].sum() / max(train_counts.sum(), 1)
            ),
            "split_time": cutoff,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if random is not None:
            summary["random_exposure_never_shown_share"] = float((~shown_random).mean())
        meta = {
            "format": 1,
            "source": "imported",
            "category_names": list(cat.category_names),
            "image_shape": list(cat.images.shape[1:]),
            "catalog_source": str(catalog),
            "head_share": cfg.head_share,
            "import": {
                "catalog": str(catalog),
                "queries": str(queries),
                "impressions": str(impressions),
                "random": str(random) if random else None,
                "retrieval": str(retrieval) if retrieval else None,
                "image_size": cfg.image_size,
                "channels": cfg.channels,
                "train_share": None if cfg.split_time is not None else cfg.train_share,
                "split_time": cutoff,
                "timestamp_unit": cfg.timestamp_unit,  # the option: auto, s, ms, us, ns
                # what each file's timestamps were read as: s|ms|us|ns (integers), iso, both
                "timestamp_units": {
                    "queries": q_clock.record(),
                    **{k: v["clock"].record() for k, v in logs.items()},
                },
                "dedupe": cfg.dedupe,
                "exact_duplicates_dropped": {
                    k: v["duplicates"]["exact"] if cfg.dedupe else 0 for k, v in logs.items()
                },
            },
            "summary": summary,
        }
        if check:
            summary["check"] = _check_report(
                logs, q_clock, n_q, n_items, cat, retrieval, random, summary, problems
            )
            return summary
        write_json(meta, tmp / "world.json")
        store_digest(tmp)  # hashed once, here: later runs check sizes and mtimes
    return summary


def _say_times(echo, clock: TimestampReader) -> None:
    """The one line that says how a file's timestamps were read, and their range."""
    if clock.low is None:
        return
    echo(
        f"{clock.path}: timestamps read as {clock.describe()}, "
        f"{_date(clock.low)} .. {_date(clock.high)}"
    )


def _check_report(logs, q_clock, n_q, n_items, cat, retrieval, random, summary, problems) -> dict:
    """What ``visctr import --check`` prints: per file, rows and distinct ids; times;
    CTR by position; coverage; duplicates; what the world can measure."""
    files = {}
    served = np.zeros(n_q, dtype=bool)
    shown = np.zeros(n_items, dtype=bool)
    for label, v in logs.items():
        st, clock = v["stats"], v["clock"]
        served |= st.served
        shown |= st.shown
        imp, clk = st.by_pos
        files[label] = {
            "path": str(st.path),
            "rows": st.rows,
            "queries": int(st.served.sum()),
            "items": int(st.shown.sum()),
            "times": clock.describe() if clock.low is not None else "from the queries file",
            "range": [_date(clock.low), _date(clock.high)] if clock.low is not None else None,
            "ctr_by_position": [
                (float(c / n) if n else None) for n, c in zip(imp, clk, strict=True)
            ],
            "impressions_by_position": [int(n) for n in imp],
            "duplicates": v["duplicates"],
            "propensity": st.propensity,
        }
    rnd = summary["clicks"].get("random")
    return {
        "files": files,
        "items": n_items,
        "categories": cat.n_categories,
        "queries": n_q,
        "users": summary["users"],
        "retrieval": summary["queries"]["retrieval"],
        "query_times": q_clock.describe(),
        "query_range": [_date(q_clock.low), _date(q_clock.high)],
        "split_time": _date(summary["split_time"]),
        "never_shown_share": float((~shown).mean()),
        "never_shown_share_train": summary["never_shown_share_train"],
        "queries_without_impressions": int((~served).sum()),
        "measurable": {
            "random_exposure_auc": random is not None
            and 0 < (rnd or 0) < summary["impressions"]["random"],
            "ope": "logged propensities"
            if logs["impressions"]["stats"].propensity
            else "estimated propensities (no propensity column)",
            "retrieval": "labelled photos"
            if retrieval is not None
            else "test clicks as targets (no --retrieval file)",
        },
        "problems": problems,
    }


def format_check(c: dict) -> str:
    """One screen: what ``visctr import --check`` found."""
    lines = [
        f"catalog: {c['items']:,} items, {c['categories']} categories",
        f"queries: {c['queries']:,} queries, {c['users']:,} users"
        + (f", {c['retrieval']:,} labelled retrieval photos" if c["retrieval"] else "")
        + f"; times read as {c['query_times']}, "
        f"{c['query_range'][0]} .. {c['query_range'][1]}; split at {c['split_time']}",
    ]
    for label, f in c["files"].items():
        d = f["duplicates"]
        lines.append(
            f"{label}: {f['rows']:,} rows, {f['queries']:,} queries, {f['items']:,} items; "
            f"times {f['times']}"
            + (f", {f['range'][0]} .. {f['range'][1]}" if f["range"] else "")
            + ("; propensity column" if f["propensity"] else "")
        )
        ctr = [
            f"{p if p < POSITIONS_SHOWN else f'{POSITIONS_SHOWN}+'}:{v:.3f}"
            for p, v in enumerate(f["ctr_by_position"])
            if v is not None
        ]
        lines.append(f"  CTR by position: {' '.join(ctr) or 'no rows'}")
        lines.append(
            f"  duplicates: {d['exact']:,} exact rows, {d['item']:,} items shown twice for one "
            f"query, {d['position']:,} positions used twice for one query"
        )
    m = c["measurable"]
    lines += [
        f"catalog items never shown: {c['never_shown_share']:.1%} in any log, "
        f"{c['never_shown_share_train']:.1%} in the train split",
        f"queries without impressions: {c['queries_without_impressions']:,}",
        "can measure: random-exposure AUC "
        + ("yes" if m["random_exposure_auc"] else "no (no random-exposure log with clicks)")
        + f"; OPE with {m['ope']}; retrieval with {m['retrieval']}",
    ]
    if c["problems"]:
        lines.append(f"problems: {len(c['problems'])} (the import would stop at the first)")
    else:
        lines.append("no problems found: 'visctr import' with the same options will succeed")
    return "\n".join(lines)


def _dense(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(unique keys, dense id of each key)``; ids follow the keys' order: numeric when
    every key is an integer (``user-9`` < ``user-10`` only when zero-padded), else lexical."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    if uniq.dtype == object and all(_INT.fullmatch(str(k)) for k in uniq):
        order = np.argsort([int(k) for k in uniq], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return uniq[order], rank[inverse].astype(np.int64)
    return uniq, inverse.astype(np.int64)


def _key_array(keys: np.ndarray):
    import pyarrow as pa

    keys = np.asarray(keys)
    if keys.dtype.kind in "iu":
        return pa.array(keys, pa.int64())
    return pa.array([str(k) for k in keys], pa.string())
