"""Atomic writes and safe loads (``visctr.io``)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from visctr.errors import InputError
from visctr.io import atomic_path, load_npy, load_torch, save_npy, save_torch, write_json


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "sub" / "a.json"
    write_json({"v": 1}, p)
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(p.read_text()) == {"v": 1}
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]  # no temp left over
    write_json({"v": 2}, p)
    assert json.loads(p.read_text()) == {"v": 2}


def test_npy_round_trip_and_errors(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_npy(a, tmp_path / "a.npy")
    b = load_npy(tmp_path / "a.npy")
    assert np.array_equal(a, b) and isinstance(b, np.memmap)
    with pytest.raises(InputError, match="file not found"):
        load_npy(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match="bad.npy: not a readable .npy"):
        load_npy(tmp_path / "bad.npy")


class _Planted:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_load_torch_reads_tensors_and_refuses_pickled_objects(tmp_path):
    save_torch({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch(tmp_path / "ok.pt")["w"], torch.ones(2))
    torch.save({"x": _Planted()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="evil.pt: not a loadable checkpoint"):
        load_torch(tmp_path / "evil.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:40])
    with pytest.raises(InputError, match="trunc.pt"):
        load_torch(tmp_path / "trunc.pt")
    with pytest.raises(InputError, match="checkpoint not found"):
        load_torch(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "ids,says",
    [
        (pa.array([0.0, 1.5, 2.0]), "has type double, expected int64"),
        (pa.array(["sku-1", "sku-2", "sku-3"]), "has type string, expected int64"),
        (pa.array([0, 1, 2**63 + 5], pa.uint64()), "has type uint64, expected int64"),
        (pa.array([0, None, 2], pa.int64()), "has null values"),
    ],
)
def test_embeddings_ids_must_be_the_worlds_integer_ids(tmp_path, ids, says):
    """Float, text, uint64 or null ids in an embeddings file: one error naming the file and
    column, not a silent cast or an internal error."""
    import pyarrow.parquet as pq

    from visctr.embeddings import read_embeddings

    path = tmp_path / "items.parquet"
    vectors = pa.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"item_id": ids, "vector": vectors}), path)
    with pytest.raises(InputError) as e:
        read_embeddings(path, "item_id")
    assert str(path) in str(e.value) and "'item_id'" in str(e.value) and says in str(e.value)


@pytest.mark.parametrize(
    "target,error",
    [
        ("numpy", OSError("2195200 requested and 139136 written")),
        ("torch", RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2195200 vs 139136")),
        ("torch", RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")),
        ("json", OSError(28, "No space left on device")),
    ],
)  # fmt: skip
def test_a_full_disk_is_enospc_naming_the_file(tmp_path, monkeypatch, target, error):
    """Whatever library ran out of space (numpy's short write, torch's zip writer, a plain
    ENOSPC without a file name), the error names the file, says "No space left on
    device", leaves no temporary file, and the CLI prints it as one line with the hint."""
    import errno

    from visctr.cli_common import os_error_line

    def fail(*a, **k):
        raise error

    path = tmp_path / "out.bin"
    if target == "numpy":
        monkeypatch.setattr(np, "save", fail)
        write = lambda: save_npy(np.zeros(3), path)  # noqa: E731
    elif target == "torch":
        monkeypatch.setattr(torch, "save", fail)
        write = lambda: save_torch({"a": torch.zeros(3)}, path)  # noqa: E731
    else:
        monkeypatch.setattr(json, "dumps", fail)
        write = lambda: write_json({"a": 1}, path)  # noqa: E731
    with pytest.raises(OSError) as e:
        write()
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert os_error_line(e.value) == (
        f"{path}: No space left on device; free some space or write elsewhere"
    )
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_pass_through_unchanged(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(RuntimeError, match="some other failure"):
        save_torch({}, tmp_path / "x.pt")


def test_npy_rows_reads_what_numpy_reads(tmp_path):
    from visctr.io import NpyRows

    a = np.arange(7 * 2 * 3 * 3, dtype=np.uint8).reshape(7, 2, 3, 3)
    np.save(tmp_path / "a.npy", a)
    r = NpyRows(tmp_path / "a.npy")
    assert len(r) == 7 and r.shape == a.shape and r.dtype == a.dtype
    np.testing.assert_array_equal(r[2], a[2])
    np.testing.assert_array_equal(r[-1], a[-1])
    np.testing.assert_array_equal(r[1:5], a[1:5])
    np.testing.assert_array_equal(r[::3], a[::3])
    np.testing.assert_array_equal(r[5:2], a[5:2])
    np.testing.assert_array_equal(r[np.array([6, 0, 6, 3])], a[[6, 0, 6, 3]])
    np.testing.assert_array_equal(np.asarray(r), a)
    r[0][:] = 0  # a copy: the store is never written through
    np.testing.assert_array_equal(r[0], a[0])
    with pytest.raises(IndexError):
        r[7]
    with pytest.raises(IndexError):
        r[np.array([1, 9])]
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-20])
    with pytest.raises(InputError, match="truncated"):
        NpyRows(tmp_path / "t.npy")[6]
    (tmp_path / "x.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match="x.npy: not a readable .npy"):
        NpyRows(tmp_path / "x.npy")
