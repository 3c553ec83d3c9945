"""The dependency rules of the README ("Four packages"), checked on the source: no import cycle, no runtime -> training arrow.

Every ``import`` and ``from ... import`` is read with ``ast``, at any depth
(function-level imports included, as they hide cycles), and resolved to the
project's modules. Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``
first, so the edge goes to each of them too: a package ``__init__`` that
re-exports its submodules would make a cycle with every submodule that
imports a sibling, and is caught here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "conf", "engine", "realtime", "training")
RUNTIME = ("engine", "realtime")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that importing ``name`` runs, parents included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            parts = t.split(".")
            for i in range(1, len(parts) + 1):
                m = ".".join(parts[:i])
                if m in modules and m != name:
                    found.add(m)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_walker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    src = tmp_path / "engine" / "x.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from training.model import A\n    from . import registry\n")
    modules = {"engine": tmp_path / "engine" / "__init__.py", "engine.x": src, "engine.registry": src,
               "training": src, "training.model": src}
    assert _imports("engine.x", src, modules) == {"engine", "engine.registry", "training", "training.model"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycles_are_found_through_a_package_init() -> None:
    g = {"engine": {"engine.registry"}, "engine.registry": {"engine.ort"}, "engine.ort": {"engine", "engine.api"},
         "engine.api": set(), "realtime": set()}
    assert _cycles(g) == [["engine", "engine.ort", "engine.registry"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_the_runtime_never_imports_training(graph: dict[str, set[str]]) -> None:
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() if a.split(".")[0] in RUNTIME
                 for b in deps if b.split(".")[0] == "training")
    assert not bad, bad


def test_the_contract_imports_no_other_package(graph: dict[str, set[str]]) -> None:
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() if a.split(".")[0] == "contract"
                 for b in deps if b.split(".")[0] not in ("contract", "conf"))
    assert not bad, bad
    assert not graph["conf"], "conf holds data only"


def test_realtime_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, realtime.cli, realtime.daemon, realtime.client, realtime.sources, realtime.server;"
        "from engine.backends import ort;"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
