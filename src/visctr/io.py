"""Artifact directories, atomic writes and safe loads.

- Every artifact is written to a temporary name in the same directory and renamed, so a
  crash never leaves a truncated file where a complete one is expected; a directory
  written whole (a world, an embeddings pair, an export) is renamed into place whole.
  Files and directories get the permissions the umask gives (``mkstemp``/``mkdtemp``
  alone would make them private to their owner).
- Every directory visctr writes carries a marker, ``.visctr.json`` ``{"kind": ...,
  "version": 1}``. visctr writes into (or replaces) a directory only when it is new,
  empty, or marked with the same kind, and never into one of its own inputs: an ``--out``
  typo cannot delete a user's files (:func:`check_out_dir`, :func:`claim_out_dir`).
- Checkpoints and exports are read with :func:`load_torch` only, which never unpickles
  arbitrary objects, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; the loaded dicts
  are checked with :func:`field` and :func:`check_state_dict` before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from visctr.errors import InputError

MARKER = ".visctr.json"
MARKER_VERSION = 1
KINDS = ("world", "embeddings", "export", "run", "encoder", "ctr")

# ``.NAME.XXXXXXXX.tmp`` (mkstemp/mkdtemp: 8 chars of [a-z0-9_]) and ``.NAME.XXXXXXXX.old``
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(?:tmp|old)$")


# ---- permissions ------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so no thread sees it change)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, mode: int) -> None:
    os.chmod(path, mode & ~current_umask())


# ---- artifact directories ----------------------------------------------------------------


def read_marker(directory: str | os.PathLike) -> str | None:
    """The kind in ``directory/.visctr.json``; None without one; error when it is damaged."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, OSError):
        data = None
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in KINDS:
        raise InputError(
            f'{path}: damaged visctr marker (expected {{"kind": one of {", ".join(KINDS)}}}); '
            "if this directory is yours to replace, delete it first"
        )
    return kind


def write_marker(directory: str | os.PathLike, kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r} (one of {KINDS})")
    write_json({"kind": kind, "version": MARKER_VERSION}, Path(directory) / MARKER)


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()


def check_not_input(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], option: str = "--out"
) -> None:
    """Refuse an output path that is, contains, or lies inside one of ``inputs``."""
    o = _resolved(out)
    for given in inputs:
        if given is None:
            continue
        i = _resolved(given)
        if o == i:
            how = "is"
        elif i.is_relative_to(o):
            how = "contains"
        elif o.is_relative_to(i):
            how = "is inside"
        else:
            continue
        raise InputError(
            f"{option} {out} {how} the input {given}; writing there could destroy the input: "
            f"pass a separate {option} directory"
        )


def check_out_dir(
    out: str | os.PathLike,
    kind: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
) -> Path:
    """Refuse an output directory visctr may not fill with a ``kind`` artifact.

    Allowed: a new path, an empty directory, or a directory marked ``.visctr.json`` with
    the same kind (a previous run of the same step). Refused: an existing file, a
    non-empty directory without the marker or marked with another kind, and a path that
    is, contains or is inside one of ``inputs``. Writes nothing.
    """
    out = Path(out)
    check_not_input(out, inputs, option)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{option} {out}: exists and is not a directory; pass a new or empty directory"
        )
    if not out.is_dir():
        return out
    found = read_marker(out)
    if found == kind:
        return out
    if found is not None:
        raise InputError(
            f"{option} {out}: holds a visctr {found} directory, not a {kind} one; "
            f"pass another {option}"
        )
    try:
        empty = next(os.scandir(out), None) is None
    except OSError as e:
        raise InputError(f"{option} {out}: cannot list it ({e.strerror})") from None
    if not empty:
        raise InputError(
            f"{option} {out}: not empty and not written by visctr (no {MARKER}); refusing to "
            f"write a {kind} directory over it: pass a new or empty directory"
        )
    return out


def claim_out_dir(
    out: str | os.PathLike,
    kind: str,
    inputs: Iterable[str | os.PathLike | None] = (),
    option: str = "--out",
) -> Path:
    """:func:`check_out_dir`, then create ``out``, mark it as a ``kind`` directory and sweep
    the temporary files a killed earlier write left in it."""
    out = check_out_dir(out, kind, inputs, option)
    out.mkdir(parents=True, exist_ok=True)
    if read_marker(out) is None:
        write_marker(out, kind)
    if _first_process():  # other DDP ranks start later, while rank 0 may be writing
        sweep_temp(out)
    return out


def _first_process() -> bool:
    return all(
        int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID")
    )


def check_out_file(
    out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), option: str = "--out"
) -> Path:
    """Refuse an output JSON file path that is a directory, an input, inside an input, or an
    existing file that is not a JSON object (what visctr writes there)."""
    out = Path(out)
    check_not_input(out, inputs, option)
    if out.is_dir():
        raise InputError(f"{option} {out}: is a directory; pass a file path such as DIR/out.json")
    if out.exists():
        try:
            ok = isinstance(json.loads(out.read_bytes()), dict)
        except (ValueError, OSError):
            ok = False
        if not ok:
            raise InputError(
                f"{option} {out}: exists and is not a JSON file written by visctr; refusing to "
                "overwrite it: pass a new path"
            )
    return out


def sweep_temp(directory: str | os.PathLike, name: str | None = None) -> int:
    """Delete the temporary files/directories a killed write left in ``directory``
    (``.NAME.XXXXXXXX.tmp``, ``.NAME.XXXXXXXX.old``; only those of ``NAME`` if given)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    n = 0
    for entry in directory.iterdir():
        m = _TEMP_RE.match(entry.name)
        if m is None or (name is not None and m.group("name") != name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        n += 1
    return n


# ---- atomic writes -----------------------------------------------------------------------


# what a short write looks like from the writers that do not raise ENOSPC themselves:
# numpy ("2195200 requested and 139136 written"), torch's zip writer ("[enforce fail at
# inline_container.cc...] ... file write failed" / "unexpected pos"), pyarrow ("IOError:
# ... No space left on device")
_SHORT_WRITE = re.compile(
    r"requested and \d+ written|inline_container|file write failed|unexpected pos|"
    r"No space left on device",
    re.IGNORECASE,
)


def disk_full_error(e: BaseException, path: Path) -> OSError | None:
    """An ``OSError(ENOSPC)`` naming ``path`` when ``e`` is a write that ran out of space
    (whichever library raised it, with or without an errno); else ``None``."""
    import errno

    err = getattr(e, "errno", None)
    if isinstance(e, OSError) and err in (errno.ENOSPC, errno.EDQUOT):
        if e.filename is not None:
            return None  # it names its file already
    elif not (isinstance(e, OSError | RuntimeError) and _SHORT_WRITE.search(str(e))):
        return None
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success. A write
    that runs out of space is an ``OSError(ENOSPC)`` naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _apply_umask(tmp_path, 0o666)
        os.replace(tmp_path, path)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Yield a temporary directory (already marked ``kind``); on success it replaces
    ``path`` whole. ``path`` must pass :func:`check_out_dir` for ``kind``."""
    path = Path(path)
    check_out_dir(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temp(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write_marker(tmp, kind)
        yield tmp
        _apply_umask(tmp, 0o777)
        check_out_dir(path, kind)  # again: it may have changed while we wrote
        if path.is_dir() and not path.is_symlink():
            # a directory can be renamed over an empty one: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(e, path)
        if full is not None:
            raise full from e
        raise


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def digest_files(root: Path, patterns: Iterable[str]) -> str:
    """sha256 over the (relative name, bytes) of the files matching ``patterns`` under ``root``."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in Path(root).glob(pat) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"{root}: no output matching {list(patterns)}")
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        _hash_file(h, p)
        h.update(b"\0")
    return h.hexdigest()[:32]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes (not its name: a copied file keeps its digest), 32 hex."""
    h = hashlib.sha256()
    _hash_file(h, Path(path))
    return h.hexdigest()[:32]


def open_parquet(path: str | os.PathLike, what: str = "file", hint: str = ""):
    """A ``pyarrow.parquet.ParquetFile`` for ``path``; a missing or unreadable file is one
    :class:`InputError` naming it (``"{path}: {what} not found{hint}"`` or
    ``"{path}: unreadable Parquet (...)"``). The one opener of every Parquet input."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found{hint}")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: unreadable Parquet ({_short(e)})") from None


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(table: Any, path: str | os.PathLike, row_group_size: int | None = None) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---- safe loads --------------------------------------------------------------------------


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Load an image/vector store; memory-mapped so RAM does not grow with it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy array ({_short(e)})") from None


class NpyRows:
    """The rows of a C-order ``.npy`` store, read from the file on demand (``pread``):
    ``rows[i]``, ``rows[a:b]`` and ``rows[index_array]`` give in-memory arrays. Nothing is
    mapped, so a pass over a store larger than RAM leaves no pages resident in the
    process (the pages a memory map touches count toward its RSS until reclaimed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read(f)
                self.offset = f.tell()
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{self.path}: not a readable .npy array ({_short(e)})") from None
        if fortran or dtype.hasobject or not shape:
            raise InputError(f"{self.path}: expected a C-order array of rows")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, start: int, n: int) -> np.ndarray:
        want = n * self.row_bytes
        buf = os.pread(self._fd, want, self.offset + start * self.row_bytes)
        if len(buf) != want:
            raise InputError(f"{self.path}: truncated store (rows {start}..{start + n})")
        return np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.shape[1:])

    def __getitem__(self, idx) -> np.ndarray:
        n = self.shape[0]
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (n if idx < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"row {idx} out of range for {n} rows")
            return self._read(i, 1)[0].copy()
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step == 1:
                return self._read(start, max(stop - start, 0)).copy()
            idx = np.arange(start, stop, step)
        rows = np.asarray(idx)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError("NpyRows takes an int, a slice or a 1-d integer array")
        rows = np.where(rows < 0, rows + n, rows)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        for k, r in enumerate(rows.tolist()):
            out[k] = self._read(r, 1)[0]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None


_UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def _weights_only_env() -> Iterator[None]:
    """Hide ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` from torch while a load runs: recent torch
    lets an explicit ``weights_only=True`` win over it, older ones may not."""
    saved = os.environ.pop(_UNSAFE_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[_UNSAFE_ENV] = saved


def _short(e: BaseException, limit: int = 200) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_torch(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file without unpickling arbitrary objects.

    ``weights_only=True`` always, whatever the environment says; every failure (missing,
    truncated, not a checkpoint, holds Python objects) is an :class:`InputError` naming
    the file.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with _weights_only_env():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "Python objects"
        raise InputError(
            f"{path}: not a loadable checkpoint: it holds {what}, which a safe (weights_only) "
            "load refuses; visctr did not write it: delete it or pass the right file"
        ) from None
    except Exception as e:  # torch raises many types for corrupt files
        raise InputError(
            f"{path}: not a loadable checkpoint ({type(e).__name__}: {_short(e)})"
        ) from None


# ---- checks on loaded dicts --------------------------------------------------------------

_MISSING = object()


def field(
    blob: Any,
    key: str,
    path: str | os.PathLike,
    types: type | tuple[type, ...],
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: Iterable[Any] | None = None,
    check: Callable[[Any], bool] | None = None,
    prefix: str = "",
) -> Any:
    """``blob[key]`` after checking its type, bounds and allowed values; else an
    :class:`InputError` naming the file and the field (``prefix + key``)."""
    where = f"{prefix}{key}"
    if not isinstance(blob, dict):
        raise InputError(
            f"{path}: {prefix.rstrip('.') or 'file'}: expected a mapping, found "
            f"{type(blob).__name__}"
        )
    value = blob.get(key, _MISSING)
    if value is _MISSING:
        raise InputError(f"{path}: missing field {where!r}; the file is damaged or not visctr's")
    want = types if isinstance(types, tuple) else (types,)
    bad_bool = isinstance(value, bool) and bool not in want
    if bad_bool or not isinstance(value, want):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in want)
        raise InputError(f"{path}: field {where!r} must be {names}, found {type(value).__name__}")
    if choices is not None and value not in list(choices):
        raise InputError(
            f"{path}: field {where!r} must be one of {list(choices)}, found {_r(value)}"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
            raise InputError(f"{path}: field {where!r} = {_r(value)} is outside [{lo}, {hi}]")
    if check is not None and not check(value):
        raise InputError(f"{path}: field {where!r} has an invalid value {_r(value)}")
    return value


def _r(value: Any) -> str:
    import reprlib

    return reprlib.repr(value)


def check_state_dict(state: Any, reference: Any, path: str | os.PathLike, what: str) -> None:
    """Check that ``state`` holds exactly the tensors of module ``reference`` with the same
    shapes (build ``reference`` under ``torch.device("meta")``: no memory is allocated)."""
    import torch

    if not isinstance(state, dict):
        raise InputError(f"{path}: {what}: expected a mapping of tensors")
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise InputError(f"{path}: {what}: entry {_r(k)} is not a named tensor")
    missing = [k for k in want if k not in state]
    if missing:
        raise InputError(f"{path}: {what}: missing tensor {missing[0]!r}")
    extra = [k for k in state if k not in want]
    if extra:
        raise InputError(f"{path}: {what}: unexpected tensor {_r(extra[0])}")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise InputError(
                f"{path}: {what}: tensor {k!r} has shape {list(state[k].shape)}, expected "
                f"{list(shape)}"
            )
