"""``World.load`` validates a world's tables: a broken world is one clear error, never a
silently wrong lookup (e.g. ``image_row`` -1 wrapping to the last image)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visctr.errors import InputError
from visctr.world import World


@pytest.fixture
def world_copy(tiny_world_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "w"
    shutil.copytree(tiny_world_dir, dst)
    return dst


def _edit(path: Path, column: str, fn) -> None:
    t = pq.read_table(path)
    values = t.column(column).to_numpy(zero_copy_only=False).copy()
    new = fn(values)
    i = t.column_names.index(column)
    pq.write_table(t.set_column(i, column, pa.array(new, t.schema.field(column).type)), path)


def _set(row: int, value):
    def fn(v):
        v[row] = value
        return v

    return fn


CASES = [
    ("items.parquet", "item_id", lambda v: np.r_[v[1:2], v[1:]], "item_id .* appears more than once"),
    ("items.parquet", "category", _set(3, 99), r"row 3: category 99 is outside 0\.\.4"),
    ("items.parquet", "category", _set(0, -1), r"row 0: category -1 is outside"),
    ("items.parquet", "image_row", _set(2, -1), r"items.parquet: row 2: image_row -1 is outside"),
    ("queries.parquet", "image_row", _set(5, 10**6), r"row 5: image_row 1000000 is outside"),
    ("queries.parquet", "query_id", _set(1, 0), "query_id 0 appears more than once"),
    ("queries.parquet", "target_item_id", _set(4, 10**9), r"row 4: target_item_id 1000000000 is not an item"),
    ("queries.parquet", "user_id", _set(0, 10**7), r"row 0: user_id 10000000 is not a user"),
    ("queries.parquet", "split", _set(0, "dev"), r"row 0: split 'dev' is not one of"),
    ("items.parquet", "popularity", _set(6, np.nan), r"row 6: popularity nan is not a finite number > 0"),
    ("items.parquet", "popularity", _set(2, 0.0), r"row 2: popularity 0.0 is not a finite number > 0"),
    ("items.parquet", "appeal", _set(1, np.inf), r"row 1: appeal inf is NaN or inf"),
]  # fmt: skip


def test_the_fixture_world_is_valid(tiny_world_dir):
    World.load(tiny_world_dir)


@pytest.mark.parametrize(
    "name,column,edit,match", CASES, ids=[f"{c[0]}:{c[1]}:{i}" for i, c in enumerate(CASES)]
)
def test_bad_table_is_one_clear_error(world_copy, name, column, edit, match):
    _edit(world_copy / name, column, edit)
    with pytest.raises(InputError, match=match):
        World.load(world_copy)


def test_affinity_must_have_one_value_per_category(world_copy):
    path = world_copy / "users.parquet"
    t = pq.read_table(path)
    short = [row[:-1] for row in t.column("affinity").to_pylist()]
    pq.write_table(t.set_column(1, "affinity", pa.array(short, pa.list_(pa.float32()))), path)
    with pytest.raises(InputError, match="users.parquet: 'affinity' must be one row of 5"):
        World.load(world_copy)


@pytest.mark.parametrize(
    "content,match",
    [(b"{not json", "world.json: not valid JSON"), (b"\xff\xfe\x00", "not valid JSON"),
     (b'{"category_names": []}', "'category_names' must be a non-empty list")],
)  # fmt: skip
def test_bad_world_json(world_copy, content, match):
    (world_copy / "world.json").write_bytes(content)
    with pytest.raises(InputError, match=match):
        World.load(world_copy)


def test_garbage_parquet_and_npy(world_copy):
    (world_copy / "users.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(InputError, match="users.parquet: unreadable Parquet"):
        World.load(world_copy)


def test_wrong_image_store_shape(world_copy):
    np.save(world_copy / "images" / "items.npy", np.zeros((10, 28), np.uint8))
    with pytest.raises(InputError, match=r"items.npy: expected uint8 \[N, C, H, W\]"):
        World.load(world_copy)


def test_a_stored_digest_is_read_without_hashing_and_an_edit_is_hashed_again(
    world_copy, monkeypatch
):
    """The digest written with the world is what a run reads (no image byte hashed); a
    file edited in place, same size, or one added, is seen and the world hashed again."""
    import visctr.world.store as store
    from visctr.io import digest_files

    assert (world_copy / store.DIGEST_FILE).is_file()  # written by the simulator
    full = digest_files(world_copy, store.CONTENT_FILES)
    calls = []

    def counting(root, patterns):
        calls.append(root)
        return digest_files(root, patterns)

    monkeypatch.setattr(store, "digest_files", counting)
    assert World.load(world_copy).digest() == full and calls == []
    images = world_copy / "images" / "items.npy"
    data = bytearray(images.read_bytes())
    data[-1] ^= 0xFF  # one pixel, same size
    images.write_bytes(bytes(data))  # a new mtime: the copy kept the simulator's
    edited = World.load(world_copy).digest()
    assert len(calls) == 1 and edited != full
    (world_copy / "impressions" / "extra.parquet").write_bytes(b"x")
    assert World.load(world_copy).digest() != edited and len(calls) == 2
