"""Inverse-propensity weights for the CTR loss (``ctr.ips``; see ``IPSConfig``).

Our choice of the standard estimator, documented because the logs give no propensities:
the logging policy's chance of *showing* an item is proportional to how often it was
shown, and the chance that a shown slot is *examined* follows the click rate by position
(relative to the top slot, forced non-increasing). Both are estimated on the fit part of
the training logs only. Weights are clipped and self-normalised per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from visctr.ctr.batch import Batch
from visctr.ctr.feature_map import FeatureMap
from visctr.errors import InputError


def examination(position_impressions: np.ndarray, position_clicks: np.ndarray) -> np.ndarray:
    """P(examined | position) relative to the top slot: click-rate ratio, non-increasing,
    positions never logged take the last logged value."""
    imp = np.asarray(position_impressions, dtype=np.float64)
    clk = np.asarray(position_clicks, dtype=np.float64)
    if imp[0] == 0 or clk[0] == 0:
        raise InputError(
            "ips: no clicks at the top position in the training logs; the position "
            "propensity cannot be estimated (turn ctr.ips off)"
        )
    rate = np.where(imp > 0, clk / np.maximum(imp, 1), np.nan)
    rel = rate / rate[0]
    last = 1.0
    for i in range(rel.size):  # fill gaps forward, then force non-increasing
        last = rel[i] if np.isfinite(rel[i]) else last
        rel[i] = last
    return np.minimum.accumulate(np.clip(rel, 0.0, 1.0))


@dataclass
class IPSWeights:
    """Per-impression weights from two tables: ``item`` (1/exposure) and ``position``
    (1/examination); ``clip`` bounds their product."""

    item: torch.Tensor  # float32 [n_items]
    position: torch.Tensor  # float32 [max_position + 1]
    clip: float
    position_column: int  # column of the position field in Batch.sparse
    position_offset: int  # its offset in the fused embedding table

    @classmethod
    def estimate(
        cls,
        fmap: FeatureMap,
        item_counts: np.ndarray,
        position_impressions: np.ndarray,
        position_clicks: np.ndarray,
        clip: float,
        exposure: bool = True,
    ) -> IPSWeights:
        counts = np.asarray(item_counts, dtype=np.float64)
        shown = counts > 0
        if not shown.any():
            raise InputError("ips: no item was shown in the training logs")
        e = np.ones_like(counts)
        if exposure:
            e[shown] = counts[shown] / counts[shown].mean()
        exam = examination(position_impressions, position_clicks)
        names = [f.name for f in fmap.fields]
        j = names.index("position")
        return cls(
            item=torch.as_tensor(1.0 / e, dtype=torch.float32),
            position=torch.as_tensor(1.0 / np.maximum(exam, 1.0 / clip), dtype=torch.float32),
            clip=float(clip),
            position_column=j,
            position_offset=int(fmap.fields[j].offset),
        )

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Weights ``[B]``, clipped to ``[1/clip, clip]`` and scaled to mean 1."""
        pos = batch.sparse[:, self.position_column] - self.position_offset
        w = self.item[batch.item_row] * self.position[pos]
        w = w.clamp(1.0 / self.clip, self.clip)
        return w / w.mean()
