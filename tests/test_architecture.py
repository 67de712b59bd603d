"""The import graph of the ``lsr`` package (no cycles, the layers only import downwards) and the parts protocols.

The graph is built from the source with :mod:`ast` (nothing is imported): every ``import`` and ``from … import``
of an ``lsr`` module counts, at module level or inside a function (a lazy import is a dependency too).
"""

from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path


from lsr import Engine
from lsr.corpus import Document
from lsr.protocols import DenseSide, DocumentSource, IndexParts, SparseSide

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    """Module name -> source file of every module of the ``lsr`` packages (``[tool.setuptools.package-dir]``)."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in package_dirs.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """The ``lsr`` modules ``module`` imports anywhere in its source (a package counts as its ``__init__``)."""
    def known(name: str) -> str:
        while name not in MODULES:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names if alias.name.split(".")[0] == "lsr"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package (a package's __init__ is its own package)
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base.split(".")[0] == "lsr":
                found |= {known(f"{base}.{alias.name}") if f"{base}.{alias.name}" in MODULES else known(base)
                          for alias in node.names}
    found.discard(module)
    return found


GRAPH = {module: _imported(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in order:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], order[dep])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return components


def _imports_from(prefix: str, outside: str | None = None) -> dict[str, list[str]]:
    """Modules under ``prefix`` -> what they import from outside it (only from under ``outside`` if given)."""
    def under(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    out = {}
    for module, deps in GRAPH.items():
        if under(module, prefix):
            bad = sorted(d for d in deps if not under(d, prefix) and (outside is None or under(d, outside)))
            if bad:
                out[module] = bad
    return out


def test_the_graph_sees_every_kind_of_import():
    assert len(MODULES) > 30 and {"lsr", "lsr.engine", "lsr.index.search", "lsr.server.app"} <= set(MODULES)
    assert "lsr.index.storage" in GRAPH["lsr.index.search"]  # relative, module level
    assert "lsr.sharded.search" in GRAPH["lsr.engine"]  # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_index_knows_nothing_of_the_rest():
    """The inverted index knows nothing of text, models or HTTP."""
    assert _imports_from("lsr.index", outside="lsr") == {}


def _private_imports(path: Path) -> list[str]:
    """``from lsr… import _name`` in a source file (another module's private name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.level or (node.module or "").split(".")[0] == "lsr")
            for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]


def test_no_module_imports_another_modules_private_names(tmp_path):
    found = {module: names for module, path in MODULES.items() if (names := _private_imports(path))}
    assert found == {}
    probe = tmp_path / "probe.py"
    probe.write_text("from lsr.corpus import _hidden\nfrom .search import check_k, _kernel\n")
    assert _private_imports(probe) == ["lsr.corpus._hidden", "search._kernel"]


def test_fusion_is_pure_ranking():
    assert GRAPH["lsr.fusion"] == set()


def test_server_goes_through_the_engine():
    """The server is a thin face over the Engine: nothing from the index, the live index or the shards."""
    for internals in ("lsr.index", "lsr.live", "lsr.snapshot", "lsr.sharded", "lsr.searcher", "lsr.pipeline"):
        assert _imports_from("lsr.server", outside=internals) == {}


def _engine_internals(path: Path) -> list[str]:
    """``<…engine>.index`` / ``.manifest`` / ``.docs`` / ``.parts`` / ``.commit`` read in a source file."""
    internals = {"index", "manifest", "docs", "parts", "commit"}
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [f"{path.name}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in internals
            and ast.unparse(node.value).split(".")[-1] == "engine"]


def test_server_uses_no_engine_internals(tmp_path):
    found = [hit for module, path in MODULES.items() if module.startswith("lsr.server") for hit in _engine_internals(path)]
    assert found == []
    probe = tmp_path / "probe.py"
    probe.write_text("def f(state):\n    return state.engine.manifest, state.engine.search('q')\n")
    assert _engine_internals(probe) == ["probe.py:2: state.engine.manifest"]


def test_single_and_live_parts_implement_the_protocols(hybrid_engine, tmp_path):
    """(The sharded parts: tests/test_distributed.py.)"""
    target = tmp_path / "index"
    shutil.copytree(hybrid_engine.index_dir, target)
    single = Engine.open(target, encoder=hybrid_engine.encoder)
    single.add_documents([Document("added-1", "a document added to a live index")])
    live = single.refresh()
    assert type(live.index).__name__ == "SegmentedIndex" and type(single.index).__name__ == "InvertedIndex"
    for engine in (single, live):
        assert isinstance(engine.parts, IndexParts) and isinstance(engine.index, SparseSide)
        assert isinstance(engine.docs, DocumentSource) and isinstance(engine.dense, DenseSide)
    assert [h.id for h in live.search("a document added to a live index", k=1)] == ["added-1"]
