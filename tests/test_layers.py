"""Imports run one way: ``data → world → losses → encoders → s3 → ctr → eval → serve → pipeline →
cli``, on top of a base of leaf modules (errors, io, config, ...). Every ``import`` of
``src/visctr`` counts, inside functions too; ``if TYPE_CHECKING:`` blocks do not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first; a module may import its own layer and the layers below it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "visctr",
            "visctr.errors",
            "visctr.io",
            "visctr.ids",
            "visctr.config",
            "visctr.presets",
            "visctr.stagedir",
            "visctr.train",
            "visctr.precision",
            "visctr.embeddings",
            "visctr.metrics",
            "visctr.cli_common",
        ),
    ),
    ("data", ("visctr.data",)),
    ("world", ("visctr.world",)),
    ("losses", ("visctr.losses",)),
    ("encoders", ("visctr.encoders",)),
    ("s3", ("visctr.s3",)),
    ("ctr", ("visctr.ctr",)),
    ("eval", ("visctr.eval",)),
    ("serve", ("visctr.serve",)),
    ("pipeline", ("visctr.pipeline",)),
    # the command line (and the console script visctr._entry and python -m visctr, above it);
    # each verb's cli.py module stays in its package's layer
    ("cli", ("visctr.cli", "visctr._entry", "visctr.__main__")),
]


def module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(path: Path, src: Path = SRC) -> set[str]:
    """The ``visctr`` modules a file imports (``from a import b`` counts ``a.b`` when that is
    a module, else ``a``)."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "visctr")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "visctr":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if _is_module(sub, src) else target)
    return out


def _is_module(name: str, src: Path = SRC) -> bool:
    p = src.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    files = sorted((src / "visctr").rglob("*.py"))
    return {module_name(p, src): imports_of(p, src) - {module_name(p, src)} for p in files}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            match = module == p or (p != "visctr" and module.startswith(p + "."))
            if match and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise KeyError(f"module {module} is in no layer; add it to LAYERS")
    return rank


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer_of(dep) > layer_of(mod):
                out.append(
                    f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
                )
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package_edges_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a package ``__init__`` to its own submodules (re-exports)."""
    return {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}


def test_every_module_is_in_a_layer():
    for mod in import_graph():
        layer_of(mod)


def test_no_lower_layer_imports_a_higher_one():
    assert layer_violations(import_graph()) == []


def test_no_import_cycles():
    assert cycles(_package_edges_removed(import_graph())) == []


def test_no_import_cycles_through_package_inits_either():
    """E.g. the S1 objective registry imports its objectives, which import the encoder config:
    the config must not import the registry back (the name is checked where it is built)."""
    assert cycles(import_graph()) == []


def test_metrics_is_a_pure_leaf():
    assert import_graph()["visctr.metrics"] == set()


def test_the_id_index_needs_only_the_errors():
    assert import_graph()["visctr.ids"] <= {"visctr.errors"}


def test_retrieval_evaluation_does_not_import_ctr():
    """The caller applies debias (a transform): retrieval is usable without the CTR stack."""
    assert not {m for m in import_graph()["visctr.eval.retrieval"] if m.startswith("visctr.ctr")}


# --- the checker itself must be able to fail ---------------------------------------------


@pytest.fixture
def fake_src(tmp_path: Path) -> Path:
    pkg = tmp_path / "visctr"
    for sub in ("", "world", "ctr", "pipeline"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "world" / "store.py").write_text("from visctr.pipeline import run\n")
    (pkg / "pipeline" / "run.py").write_text("def f():\n    from visctr.pipeline.report import g\n")
    (pkg / "pipeline" / "report.py").write_text("from .run import f\n")
    (pkg / "ctr" / "model.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from visctr.pipeline import run\n"
    )
    return tmp_path


def test_checker_finds_an_upward_import_and_a_cycle(fake_src):
    graph = import_graph(fake_src)
    assert graph["visctr.world.store"] == {"visctr.pipeline.run"}
    assert graph["visctr.ctr.model"] == set()  # TYPE_CHECKING only
    assert layer_violations(graph) == [
        "visctr.world.store (world) imports visctr.pipeline.run (pipeline)"
    ]
    assert cycles(graph) == [["visctr.pipeline.report", "visctr.pipeline.run"]]
