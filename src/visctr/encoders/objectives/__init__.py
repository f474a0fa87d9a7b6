"""S1 objectives as plug-ins, one file each (:mod:`.simsiam`, :mod:`.infonce`, ...).

:func:`build_objective` makes the one a config names; :func:`register` adds another.
"""

# the built-in objectives register themselves on import
from visctr.encoders.objectives import byol, infonce, simsiam  # noqa: F401
from visctr.encoders.objectives.base import (
    OBJECTIVES,
    S1Objective,
    TwoViews,
    build_objective,
    head_spec,
    mlp,
    objective_class,
    register,
)

__all__ = [
    "OBJECTIVES",
    "S1Objective",
    "TwoViews",
    "build_objective",
    "head_spec",
    "mlp",
    "objective_class",
    "register",
]
