"""Imports run one way (data → world → losses → encoders → ctr → eval → pipeline → cli):
the rules of the ctr/eval boundary, checked on the source (imports inside functions too).

A verb's ``cli.py`` belongs to the CLI layer wherever it lives, so it is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "visctr"


def _imports(path: Path) -> set[str]:
    """Every ``visctr...`` module a file imports (``from visctr.eval import metrics`` counts
    as ``visctr.eval.metrics``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return {m for m in out if m == "visctr" or m.startswith("visctr.")}


def _modules(package: str) -> list[Path]:
    return [p for p in sorted((SRC / package).rglob("*.py")) if p.name != "cli.py"]


def _under(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def _is_package_only(mod: str, imports: set[str]) -> bool:
    """``from visctr.eval import metrics`` adds ``visctr.eval`` too: not a violation."""
    return any(m.startswith(mod + ".") for m in imports)


def test_the_metrics_module_is_a_leaf():
    assert _imports(SRC / "eval" / "metrics.py") == set()


def test_the_id_index_is_a_base_module():
    assert _imports(SRC / "ids.py") <= {"visctr.errors", "visctr.errors.InputError"}


@pytest.mark.parametrize("path", _modules("ctr"), ids=lambda p: p.name)
def test_ctr_imports_only_the_metrics_of_eval_and_nothing_above(path):
    imports = _imports(path)
    bad = {
        m
        for m in imports
        if (_under(m, "visctr.eval") and not _under(m, "visctr.eval.metrics"))
        or any(_under(m, up) for up in ("visctr.pipeline", "visctr.serve", "visctr.cli"))
    }
    bad = {m for m in bad if not _is_package_only(m, imports)}
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("eval"), ids=lambda p: p.name)
def test_eval_imports_nothing_above_it(path):
    imports = _imports(path)
    bad = {m for m in imports if any(_under(m, up) for up in ("visctr.pipeline", "visctr.cli"))}
    assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_retrieval_evaluation_does_not_import_ctr():
    """The caller applies debias (a transform): retrieval is usable without the CTR stack."""
    assert not {m for m in _imports(SRC / "eval" / "retrieval.py") if _under(m, "visctr.ctr")}
