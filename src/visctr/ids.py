"""Id → row lookup, the one used everywhere (world tables, embedding files, logs, features).

A base module: it imports nothing of visctr but ``errors``, so every layer can use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from visctr.errors import InputError

__all__ = ["IdIndex"]


class IdIndex:
    """Vectorised int64 id → row lookup over unique ``ids`` (a dense table when the ids
    are compact, else a binary search)."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)
        self.ids = ids
        self._lut: np.ndarray | None = None
        if ids.size and ids.min() >= 0 and ids.max() < 4 * ids.size + 1024:
            lut = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
            lut[ids] = np.arange(ids.size)
            self._lut = lut
        else:
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]

    def __len__(self) -> int:
        return int(self.ids.size)

    def rows(
        self,
        query: np.ndarray,
        strict: bool = False,
        what: str = "id",
        path: str | Path | None = None,
        hint: str = "",
    ) -> np.ndarray:
        """Row of each id in ``query``: -1 where absent, or with ``strict`` an ``InputError``
        naming the first missing id.

        The error reads ``"{path}: {what} {id} not found ({n} unknown ids){hint}"``: ``what``
        names the field (``"item_id"``), ``path`` the file the ids come from.
        """
        q = np.asarray(query, dtype=np.int64)
        if self._lut is not None:
            out = np.full(q.shape, -1, dtype=np.int64)
            ok = (q >= 0) & (q < self._lut.size)
            out[ok] = self._lut[q[ok]]
        elif self._sorted.size == 0:
            out = np.full(q.shape, -1, dtype=np.int64)
        else:
            pos = np.clip(np.searchsorted(self._sorted, q), 0, self._sorted.size - 1)
            out = np.where(self._sorted[pos] == q, self._order[pos], -1)
        if strict:
            missing = out < 0
            if missing.any():
                where = f"{path}: " if path is not None else ""
                first = int(q.reshape(-1)[np.flatnonzero(missing.reshape(-1))[0]])
                raise InputError(
                    f"{where}{what} {first} not found ({int(missing.sum())} unknown ids){hint}"
                )
        return out
