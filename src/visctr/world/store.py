"""Reading a world directory (format: docs/world-format.md).

Two kinds of world share one format. A *simulated* world (``visctr simulate``) also holds
the simulator's hidden ground truth: item ``popularity`` and ``appeal``, user
``affinity``, every query's ``target_item_id``. An *imported* world (``visctr import``,
a shop's own catalog and logs) has only what every world has: the catalog, the queries,
the impression logs, and optionally a random-exposure log and labelled retrieval
queries. ``World.ground_truth`` tells them apart; metrics that need a missing input are
skipped by their callers, never computed from a stand-in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visctr.errors import InputError
from visctr.io import digest_files, load_npy, open_parquet

SPLITS = ("train", "test", "random")
# every file a world holds, for its content digest
CONTENT_FILES = ("world.json", "*.parquet", "impressions/*.parquet", "images/*.npy")
DIGEST_FILE = "digest.json"  # the content digest, stored when the world is written


def _content_stats(root: Path) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of the world's content files."""
    files = sorted({p for pat in CONTENT_FILES for p in root.glob(pat) if p.is_file()})
    out = {}
    for p in files:
        st = p.stat()
        out[str(p.relative_to(root))] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def store_digest(root: str | Path) -> str:
    """Hash a world just written (its files as they will stay) and store the digest with
    each file's size and modification time, so that opening it later hashes no byte."""
    from visctr.io import write_json

    root = Path(root)
    digest = digest_files(root, CONTENT_FILES)
    write_json({"digest": digest, "files": _content_stats(root)}, root / DIGEST_FILE)
    return digest


def stored_digest(root: Path) -> str | None:
    """The stored digest, when every content file still has the size and modification
    time it was hashed with (and no file came or went); else ``None``."""
    try:
        rec = json.loads((root / DIGEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("digest"), str):
        return None
    if rec.get("files") != _content_stats(root):
        return None
    return rec["digest"]


ITEM_COLUMNS = {
    "item_id": "int64",
    "category": "int32",
    "image_row": "int64",
    "train_impressions": "int64",
    "is_head": "bool",
}
QUERY_COLUMNS = {
    "query_id": "int64",
    "user_id": "int64",
    "target_item_id": "int64",  # -1: unknown (imported worlds, outside the retrieval split)
    "timestamp": "int64",
    "split": "string",
    "image_row": "int64",
}
# the simulator's hidden ground truth: required in a simulated world, absent when imported
GROUND_TRUTH_ITEM_COLUMNS = {"popularity": "double"}
# the user's own ids, kept as given (string or integer) next to the internal int64 ids
KEY_COLUMNS = {
    "items.parquet": "item_key",
    "queries.parquet": "query_key",
    "users.parquet": "user_key",
}
UNKNOWN = -1  # target_item_id / user_id that an imported world does not know
IMPRESSION_COLUMNS = {
    "query_id": "int64",
    "user_id": "int64",
    "item_id": "int64",
    "position": "int32",
    "clicked": "int8",
    "timestamp": "int64",
}
PROPENSITY = "propensity"  # optional float64 impressions column (a shop's logged propensity)


def check_columns(schema, expected: dict[str, str], path: Path) -> None:
    """Raise a clear error when a Parquet schema lacks a column or has the wrong type."""
    import pyarrow as pa

    for name, typ in expected.items():
        if name not in schema.names:
            raise InputError(f"{path}: missing column {name!r}")
        t = schema.field(name).type
        got = str(t)
        if typ == "list<float>":  # any list (item name varies by writer) of float32/64
            ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(
                t.value_type
            )
            if not ok:
                raise InputError(f"{path}: column {name!r} has type {got}, expected a float list")
            continue
        if got != typ and not (typ == "string" and got == "large_string"):
            raise InputError(f"{path}: column {name!r} has type {got}, expected {typ}")


@dataclass
class World:
    """A simulated or imported world on disk; tables are small, images memory-mapped."""

    root: Path
    meta: dict
    items: dict[str, np.ndarray]
    queries: dict[str, np.ndarray]
    users_affinity: np.ndarray | None  # float32 [n_users, n_categories]; None when imported
    item_images: np.ndarray  # uint8 [N, C, H, W] (memmap)
    query_images: np.ndarray  # uint8 [Q, C, H, W] (memmap)
    user_keys: np.ndarray | None = None  # the user's own user ids, row = user_id
    _digest: str | None = field(default=None, repr=False, compare=False)

    @property
    def category_names(self) -> list[str]:
        return list(self.meta["category_names"])

    @property
    def n_categories(self) -> int:
        return len(self.meta["category_names"])

    @property
    def source(self) -> str:
        """``simulated`` (``visctr simulate``) or ``imported`` (``visctr import``)."""
        return str(self.meta.get("source", "simulated"))

    @property
    def ground_truth(self) -> bool:
        """Whether the simulator's hidden truth (popularity, appeal, affinity, every query's
        target) is here: the A/B test and the by-category analysis need it."""
        return self.source == "simulated"

    @property
    def has_random_exposure(self) -> bool:
        return self.impressions_path("random").is_file()

    @property
    def has_retrieval_labels(self) -> bool:
        return bool((self.queries["split"] == "retrieval").any())

    def item_keys(self) -> np.ndarray:
        """The user's item ids (``item_key``) in row order, else the internal ``item_id``."""
        return self.items.get("item_key", self.items["item_id"])

    def query_keys(self) -> np.ndarray:
        return self.queries.get("query_key", self.queries["query_id"])

    def digest(self) -> str:
        """Content digest of every file of the world (tables, logs, images): what the stage
        keys of everything trained on it chain on, so a world replaced or edited under the
        same path is a new key (load it again to see edits made since).

        Stored when the world was written (``digest.json``) and read back while every
        file keeps its size and modification time; a file edited, added or removed since
        makes it hash every byte again (as git's index does, an edit that restores both
        size and mtime goes unseen)."""
        if self._digest is None:  # once per loaded world: every stage key of a run reads it
            self._digest = stored_digest(self.root) or digest_files(self.root, CONTENT_FILES)
        return self._digest

    def impressions_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.root / "impressions" / f"{split}.parquet"

    def read_impressions(self, split: str) -> dict[str, np.ndarray]:
        """Whole split as numpy columns (small worlds; use streaming readers at scale)."""
        path = self.impressions_path(split)
        pf = open_parquet(path, "impressions file")
        check_columns(pf.schema_arrow, IMPRESSION_COLUMNS, path)
        table = pf.read(columns=list(IMPRESSION_COLUMNS))
        return {c: table.column(c).to_numpy() for c in IMPRESSION_COLUMNS}

    def read_propensity(self, split: str) -> np.ndarray | None:
        """The split's optional ``propensity`` column (float64, in row order of
        :meth:`read_impressions`): P(the logging policy showed that item at that position
        for that query), when the shop's log recorded it; ``None`` when it has none."""
        path = self.impressions_path(split)
        pf = open_parquet(path, "impressions file")
        if PROPENSITY not in pf.schema_arrow.names:
            return None
        col = pf.read(columns=[PROPENSITY]).column(PROPENSITY)
        import pyarrow as pa

        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise InputError(f"{path}: column {PROPENSITY!r} has type {col.type}, expected float")
        if col.null_count:
            raise InputError(f"{path}: column {PROPENSITY!r} has {col.null_count} null values")
        p = col.to_numpy().astype(np.float64)
        bad = ~(np.isfinite(p) & (p > 0) & (p <= 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{path}: row {row}: propensity {float(p[row])} is not in (0, 1] "
                f"({int(bad.sum())} such rows)"
            )
        return p

    def query_rows(self, split: str) -> np.ndarray:
        """Row indices (into ``queries``) of one query split: train|test|random|retrieval."""
        return np.nonzero(self.queries["split"] == split)[0]

    @classmethod
    def load(cls, root: str | Path) -> World:
        """Read and validate a world directory; every error names the file and the field.

        Args:
            root: what ``visctr simulate`` or ``visctr import`` wrote (a run keeps its
                world in ``RUN/world/data``).

        Returns:
            The world: its tables (``items``, ``queries``: dicts of numpy columns), its
            images (``item_images``, ``query_images``: uint8 ``[N, C, H, W]``, memory-mapped)
            and ``meta`` (``world.json``).

        Example:
            >>> world = visctr.World.load(run_dir / "world" / "data")
            >>> world.source, world.item_images.shape[1:]
            ('simulated', (1, 28, 28))
        """
        import pyarrow as pa

        root = Path(root)
        meta_path = root / "world.json"
        if not meta_path.is_file():
            raise InputError(
                f"{root}: not a world directory (no world.json); run "
                "'visctr simulate --out DIR' first"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{meta_path}: not valid JSON ({e})") from None
        names = meta.get("category_names") if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names:
            raise InputError(f"{meta_path}: 'category_names' must be a non-empty list")

        def table(name: str, expected: dict[str, str]) -> dict[str, np.ndarray]:
            path = root / name
            try:
                t = open_parquet(path).read()
            except (pa.ArrowException, OSError) as e:
                raise InputError(f"{path}: unreadable Parquet ({e})") from None
            check_columns(t.schema, expected, path)
            return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}

        source = meta.get("source", "simulated")
        if source not in ("simulated", "imported"):
            raise InputError(
                f"{meta_path}: 'source' must be 'simulated' or 'imported', got {source!r}"
            )
        truth = source == "simulated"
        items = table(
            "items.parquet", {**ITEM_COLUMNS, **(GROUND_TRUTH_ITEM_COLUMNS if truth else {})}
        )
        queries = table("queries.parquet", QUERY_COLUMNS)
        queries["split"] = queries["split"].astype(str)
        users = table("users.parquet", USER_COLUMNS if truth else {"user_id": "int64"})
        aff = None
        if "affinity" in users:
            try:
                aff = np.asarray(list(users["affinity"]), dtype=np.float32)
            except ValueError:
                raise InputError(
                    f"{root / 'users.parquet'}: 'affinity' rows must all have one length"
                ) from None
        for name, tab in (
            ("items.parquet", items),
            ("queries.parquet", queries),
            ("users.parquet", users),
        ):
            key = KEY_COLUMNS[name]
            if key in tab:
                v = tab[key]
                if v.dtype.kind not in "iuOU":
                    raise InputError(
                        f"{root / name}: column {key!r} must be strings or integers, got {v.dtype}"
                    )
                if v.dtype.kind in "OU" and any(x is None for x in v):
                    raise InputError(f"{root / name}: column {key!r} has nulls")
                _unique(v, root / name, key)
        world = cls(
            root=root,
            meta=meta,
            items=items,
            queries=queries,
            users_affinity=aff,
            item_images=load_npy(root / "images" / "items.npy"),
            query_images=load_npy(root / "images" / "queries.npy"),
            user_keys=users.get("user_key"),
        )
        world._validate(users["user_id"])
        for split in SPLITS:  # the logs are streamed later: check their schema now
            path = world.impressions_path(split)
            if path.is_file():
                check_columns(open_parquet(path).schema_arrow, IMPRESSION_COLUMNS, path)
        return world

    def _validate(self, user_ids: np.ndarray) -> None:
        """Cross-table checks: ids unique, codes in range, references that resolve."""
        root = self.root
        items_p, queries_p, users_p = (
            root / "items.parquet",
            root / "queries.parquet",
            root / "users.parquet",
        )
        _unique(self.items["item_id"], items_p, "item_id")
        _unique(self.queries["query_id"], queries_p, "query_id")
        _unique(user_ids, users_p, "user_id")
        _in_range(self.items["category"], self.n_categories, items_p, "category")
        for col in ("popularity", "appeal", "bid"):  # what the A/B test and OPE read
            if col in self.items:
                v = self.items[col]
                if v.dtype.kind not in "fiu":
                    raise InputError(
                        f"{items_p}: column {col!r} must be numbers, got {v.dtype} (row 0: "
                        f"{v[0]!r})"
                    )
                v = np.asarray(v, dtype=np.float64)
                bad = ~np.isfinite(v)
                if col in ("popularity", "bid"):
                    bad |= v <= 0
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    what = "not a finite number > 0" if col != "appeal" else "NaN or inf"
                    raise InputError(
                        f"{items_p}: row {row}: {col} {float(v[row])} is {what} "
                        f"({int(bad.sum())} such rows)"
                    )
        for img, path, t in (
            (self.item_images, root / "images" / "items.npy", self.items),
            (self.query_images, root / "images" / "queries.npy", self.queries),
        ):
            if img.ndim != 4 or img.dtype != np.uint8:
                raise InputError(
                    f"{path}: expected uint8 [N, C, H, W], got {img.dtype} shape {img.shape}"
                )
            src = items_p if t is self.items else queries_p
            _in_range(
                t["image_row"], len(img), src, "image_row", f"the {len(img)} images of {path}"
            )
        bad = ~np.isin(self.queries["split"], QUERY_SPLITS)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{queries_p}: row {row}: split {str(self.queries['split'][row])!r} is not one of "
                f"{', '.join(QUERY_SPLITS)}"
            )
        targets = self.queries["target_item_id"]
        missing = ~np.isin(targets, self.items["item_id"])
        if not self.ground_truth:  # unknown targets are fine, except on labelled queries
            missing &= (targets != UNKNOWN) | (self.queries["split"] == "retrieval")
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise InputError(
                f"{queries_p}: row {row}: target_item_id {self.queries['target_item_id'][row]} "
                f"is not an item of {items_p}"
            )
        unknown = ~np.isin(self.queries["user_id"], user_ids)
        if not self.ground_truth:  # labelled retrieval photos need not have a user
            unknown &= (self.queries["user_id"] != UNKNOWN) | (self.queries["split"] != "retrieval")
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise InputError(
                f"{queries_p}: row {row}: user_id {self.queries['user_id'][row]} is not a "
                f"user of {users_p}"
            )
        aff = self.users_affinity
        if aff is not None:
            if aff.ndim != 2 or aff.shape != (len(user_ids), self.n_categories):
                raise InputError(
                    f"{users_p}: 'affinity' must be one row of {self.n_categories} values per "
                    f"user (the world's categories), got shape {aff.shape}"
                )
            if not np.isfinite(aff).all():
                raise InputError(f"{users_p}: 'affinity' has NaN or inf")
        if not np.array_equal(np.asarray(user_ids), np.arange(len(user_ids))):
            raise InputError(
                f"{users_p}: user_id must be 0..{len(user_ids) - 1} in row order (the row of "
                "each user's affinity)"
            )


QUERY_SPLITS = ("train", "test", "random", "retrieval")
USER_COLUMNS = {"user_id": "int64", "affinity": "list<float>"}


def _unique(ids: np.ndarray, path: Path, column: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{path}: {column} {uniq[counts > 1][0]} appears more than once")


def _in_range(values: np.ndarray, n: int, path: Path, column: str, what: str = "") -> None:
    v = np.asarray(values)
    bad = (v < 0) | (v >= n)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: row {row}: {column} {v[row]} is outside 0..{n - 1}"
            + (f" ({what})" if what else "")
        )
