"""The package's shape: every module imports, the module import graph (top-level and function-local
imports alike) has no cycle, and no Python file is longer than 500 lines."""
import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import sparseinfer

PACKAGE = "sparseinfer"
ROOT = Path(sparseinfer.__file__).parent
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Every module of the package -> its file (packages: __init__.py; native: the .so)."""
    found = {PACKAGE: ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix=PACKAGE + "."):
        found[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return found


MODULES = _modules()


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(module: str, node: ast.AST) -> list[str]:
    """The package modules an Import / ImportFrom node names (a `from M import x` names M.x when
    that is a module, else M itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    base = node.module or ""
    if node.level:
        package = _package_of(module).split(".")
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != PACKAGE:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> modules whose code its imports run: the target, and the target's enclosing
    packages that do not enclose the importer (their __init__ runs first). Importing a name from
    one's own enclosing package (`from . import x` where x is not a module) counts as an edge to it."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if path.suffix != ".py":  # native modules import nothing of ours
            graph[module] = set()
            continue
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(module, node):
                    if target != module:
                        edges.add(target)
                    own = set(_ancestors(module)) | {module}
                    edges.update(p for p in _ancestors(target) if p not in own)
        graph[module] = {e for e in edges if e in MODULES}
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """A list of modules forming a cycle, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)


def test_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    # a function-local `from .. import name` of the root package is an edge to the root
    tree = ast.parse("def f():\n    from .. import build_info\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert _imported(PACKAGE + ".benchmarks.report", node) == [PACKAGE]


def _python_files():
    repo = Path(__file__).resolve().parent.parent
    files = sorted(p for p in MODULES.values() if p.suffix == ".py")
    for folder in ("tests", "bench"):
        files += sorted((repo / folder).rglob("*.py"))
    return files


def test_no_python_file_over_500_lines():
    long = {str(p): n for p in _python_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
