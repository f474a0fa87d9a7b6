"""S3's serving artifact: ``debias.pt`` and the transform that applies it.

Retrieval uses the gated fusion by default (what the CTR model itself consumes); set
``debias.retrieval_vector: debiased`` to export ``d`` alone. ``debias.pt`` holds the
DebiasNet and Gate weights plus that choice and is loadable with ``weights_only=True``;
``DebiasTransform`` (or ``apply_debias``) maps any embedding array with it: retrieval
evaluation and serving apply the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visctr.errors import InputError
from visctr.s3.config import DebiasConfig
from visctr.s3.net import DebiasHead

DEBIAS_FORMAT = 1


def export_debias(
    head: DebiasHead,
    cfg: DebiasConfig,
    dim: int,
    path: Path,
    item_ids: np.ndarray | None = None,
    item_buckets: np.ndarray | None = None,
    embeddings_encoder: str | None = None,
) -> None:
    """Write ``debias.pt``: weights + the config needed to rebuild and apply them. An
    exposure-aware head (``n_buckets > 0``) also stores each training item's id and
    exposure bucket (``item_ids``, ``item_buckets``), which serving looks items up by.
    ``embeddings_encoder``: the digest of the encoder whose embeddings it was trained on
    (read back as :attr:`DebiasTransform.embeddings_encoder`)."""
    from visctr.io import save_torch

    blob = {
        "format": DEBIAS_FORMAT,
        "dim": dim,
        "hidden": cfg.hidden,
        "retrieval_vector": cfg.retrieval_vector,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
    }
    if embeddings_encoder is not None:
        blob["embeddings_encoder"] = embeddings_encoder
    if head.n_buckets:
        if item_ids is None or item_buckets is None or len(item_ids) != len(item_buckets):
            raise ValueError("an exposure-aware head is exported with its items' buckets")
        blob["exposure_buckets"] = head.n_buckets
        blob["item_ids"] = torch.as_tensor(np.asarray(item_ids, dtype=np.int64))
        blob["item_buckets"] = torch.as_tensor(np.asarray(item_buckets, dtype=np.int64))
    save_torch(blob, path)


@dataclass
class ExposureTable:
    """The training items' exposure buckets of an exposure-aware ``debias.pt``, by item id
    (an id it does not hold was never shown in training: bucket 0)."""

    ids: np.ndarray  # int64, sorted
    buckets: np.ndarray  # int64, aligned to ids

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise InputError(
                f"exposure-aware debias head: item ids must be integers, got {ids.dtype}"
            )
        out = np.zeros(len(ids), dtype=np.int64)
        if len(self.ids):
            at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
            hit = self.ids[at] == ids
            out[hit] = self.buckets[at[hit]]
        return out


def load_debias(path: Path) -> tuple[DebiasHead, str]:
    """The exported debias head and which vector retrieval uses (``gated``/``debiased``)."""
    head, mode, _, _ = load_debias_full(path)
    return head, mode


def load_debias_full(path: Path) -> tuple[DebiasHead, str, ExposureTable | None, str | None]:
    """:func:`load_debias`, the exposure table of an exposure-aware head (else ``None``)
    and the digest of the encoder whose embeddings it was trained on (``None`` if the file
    does not record it)."""
    from visctr.io import check_state_dict, field, load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != DEBIAS_FORMAT:
        raise InputError(f"{path}: not a visctr debias export (format {DEBIAS_FORMAT})")
    dim = field(blob, "dim", path, int, lo=1, hi=65_536)
    hidden = field(blob, "hidden", path, int, lo=1, hi=65_536)
    mode = field(blob, "retrieval_vector", path, str, choices=("gated", "debiased"))
    made_by = None
    if "embeddings_encoder" in blob:
        made_by = field(blob, "embeddings_encoder", path, str, check=lambda v: 0 < len(v) <= 128)
    n_buckets = 0
    table = None
    if "exposure_buckets" in blob:
        n_buckets = field(blob, "exposure_buckets", path, int, lo=1, hi=1024)
        ids, buckets = blob.get("item_ids"), blob.get("item_buckets")
        ok = all(
            isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.dim() == 1
            for t in (ids, buckets)
        )
        if not ok or ids.shape != buckets.shape:
            raise InputError(f"{path}: item_ids / item_buckets must be two int64 vectors alike")
        b = buckets.numpy()
        if b.size and (b.min() < 0 or b.max() >= n_buckets):
            raise InputError(f"{path}: item_buckets must lie in [0, {n_buckets})")
        order = np.argsort(ids.numpy(), kind="stable")
        table = ExposureTable(ids.numpy()[order], b[order])
    with torch.device("meta"):  # shapes only: nothing allocated before the weights fit
        check_state_dict(
            field(blob, "state_dict", path, dict),
            DebiasHead(dim, hidden, n_buckets),
            path,
            "weights",
        )
    head = DebiasHead(dim, hidden, n_buckets)
    head.load_state_dict(blob["state_dict"])
    head.eval()
    return head, mode, table, made_by


class DebiasServing(nn.Module):
    """The vector retrieval uses, as one module: the gated fusion ``head(v)`` or the
    debiased vector ``head.net(v)`` alone, L2-normalised (traceable for serving).

    An exposure-aware head's gate reads each row's exposure bucket: ``buckets`` (item
    rows), else ``queries=True`` fixes the query row for every input (the traced query
    side of an export)."""

    def __init__(self, head: DebiasHead, mode: str, queries: bool = False) -> None:
        super().__init__()
        if mode not in ("gated", "debiased"):
            raise ValueError(f"mode must be 'gated' or 'debiased', got {mode!r}")
        self.head = head
        self.gated = mode == "gated"
        self.bucket = head.query_bucket if queries and head.n_buckets else None

    def forward(self, v: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        if not self.gated:
            return F.normalize(self.head.net(v), dim=-1)
        if self.bucket is not None:
            return F.normalize(self.head(v, self.bucket), dim=-1)
        return F.normalize(self.head(v, buckets), dim=-1)


class DebiasTransform:
    """An exported ``debias.pt`` as a function on embedding arrays ``[n, D] → [n, D]``.

    What ``visctr.eval.retrieval.evaluate_retrieval`` takes as its ``transform`` and what
    serving applies to the item vectors: L2-normalised float32 vectors, the gated fusion
    (default, what the CTR model uses) or the debiased vector alone, as chosen at training
    (``mode`` overrides). The file is read once.

    ``items(vectors, ids)`` maps catalog items and ``queries(vectors)`` query images; a
    head with the exposure-aware gate (``debias.gate_exposure``) needs to know which, as
    its gate reads the item's exposure bucket (by id, from the file; an id it does not
    hold was never shown: bucket 0) or the query row. Calling the transform itself,
    ``transform(vectors)``, is for heads without it and is refused for one with it.
    """

    def __init__(self, path: Path, mode: str | None = None, batch_size: int = 65_536):
        self.path = Path(path)
        head, saved_mode, self.table, self.embeddings_encoder = load_debias_full(self.path)
        self.mode = mode or saved_mode
        self.module = DebiasServing(head, self.mode).eval()
        self.query_module = DebiasServing(head, self.mode, queries=True).eval()
        self.dim = head.gate.proj.out_features
        self.batch_size = batch_size

    def check_embeddings(self, embeddings: Path) -> None:
        """Refuse an embeddings folder made by another encoder than the one whose
        embeddings this head was trained on (``visctr.embeddings.check_trained_on``)."""
        from visctr.embeddings import check_trained_on

        check_trained_on(embeddings, self.embeddings_encoder, self.path)

    @property
    def exposure_aware(self) -> bool:
        """Whether the gate reads exposure (``items`` and ``queries`` differ)."""
        return self.table is not None

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        if self.exposure_aware:
            raise InputError(
                f"{self.path}: this debias head's gate reads exposure "
                "(debias.gate_exposure): map items with .items(vectors, ids) and query "
                "images with .queries(vectors)"
            )
        return self._map(self.module, vectors, None)

    def items(self, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Catalog items' vectors ``[n, D]`` with their item ids ``[n]``."""
        if len(ids) != len(vectors):
            raise InputError(f"{self.path}: {len(vectors)} item vectors but {len(ids)} ids")
        buckets = self.table.lookup(ids) if self.table is not None else None
        return self._map(self.module, vectors, buckets)

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Query images' vectors ``[n, D]``."""
        return self._map(self.query_module, vectors, None)

    def _map(self, module: nn.Module, vectors: np.ndarray, buckets) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise InputError(
                f"{self.path}: expects vectors of width {self.dim}, got shape {v.shape}"
            )
        out = np.empty_like(v)
        bs = self.batch_size
        with torch.no_grad():
            for s in range(0, v.shape[0], bs):
                x = torch.from_numpy(np.ascontiguousarray(v[s : s + bs]))
                b = None if buckets is None else torch.from_numpy(buckets[s : s + bs])
                out[s : s + bs] = module(x, b).numpy()
        return out


def debias_transform(path: Path, mode: str | None = None) -> DebiasTransform:
    """The retrieval transform of a trained S3 model's ``debias.pt`` (see ``DebiasTransform``)."""
    return DebiasTransform(path, mode)


def apply_debias(
    debias_path: Path, vectors: np.ndarray, batch_size: int = 65_536, mode: str | None = None
) -> np.ndarray:
    """Map an embedding array ``[n, D]`` through S3's debias head (one call of
    :class:`DebiasTransform`): the vectors S1+S2+D retrieves with.

    Args:
        debias_path: the ``debias.pt`` that ``train_ctr`` writes for an S3 model.
        vectors: float32 ``[n, D]`` embeddings of the encoder the head was trained on.
        batch_size: rows per forward pass.
        mode: ``gated`` (the fused vector) or ``debiased`` (the debias network's output
            alone); default: as chosen at training (``debias.retrieval_vector``).

    Returns:
        float32 ``[n, D]``, L2-normalised rows.

    Example:
        >>> s3 = run_dir / "seed_0/ctr/s1_s2_d/debias.pt"
        >>> vectors = visctr.embed(run_dir / "seed_0/encoders/s1_s2/encoder.pt",
        ...                        [np.full((28, 28), 200, np.uint8)])
        >>> visctr.apply_debias(s3, vectors).shape
        (1, 64)
    """
    return DebiasTransform(debias_path, mode, batch_size)(vectors)
