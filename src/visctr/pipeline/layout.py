"""``RunLayout``: every path of a ``visctr run`` directory, named in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """``root/`` holds ``config.yaml``, ``world/``, ``seed_<n>/{encoders,embeddings,ctr}/``
    (and ``seed_<n>/ctr_<c>/`` for further CTR seeds),
    ``results.json``, ``report.md`` and ``plots/``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def world_stage(self) -> Path:
        return self.root / "world"

    @property
    def world(self) -> Path:
        """The world directory itself (what ``visctr simulate --out`` writes)."""
        return self.world_stage / "data"

    def seed(self, seed: int) -> Path:
        return self.root / f"seed_{seed}"

    def encoder_stage(self, seed: int, recipe: str) -> Path:
        return self.seed(seed) / "encoders" / recipe

    def encoder(self, seed: int, recipe: str) -> Path:
        """The ``encoder.pt`` of an encoder recipe (see ``pipeline.methods.ENCODERS``)."""
        return self.encoder_stage(seed, recipe) / "encoder.pt"

    def embeddings(self, seed: int, recipe: str) -> Path:
        return self.seed(seed) / "embeddings" / recipe

    def ctr(self, seed: int, method_slug: str, ctr_seed: int = 0) -> Path:
        """A method's CTR model for encoder seed ``seed``: ``ctr/<slug>`` for the first CTR
        seed, ``ctr_<c>/<slug>`` for CTR seed ``c >= 1`` (``visctr run --ctr-seeds``)."""
        return self.seed(seed) / ("ctr" if ctr_seed == 0 else f"ctr_{ctr_seed}") / method_slug


def ctr_training_seed(seed: int, ctr_seed: int) -> int:
    """The seed CTR seed ``ctr_seed`` of encoder seed ``seed`` trains with: ``seed`` itself
    for the first (so a run with one CTR seed is the run it always was), then
    ``seed + 1000·ctr_seed``."""
    return seed + 1000 * ctr_seed
