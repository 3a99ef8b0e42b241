"""No import cycle among covkernels' modules (issue 17, item 8): every import statement counts, the lazy ones
inside functions included, so the dependency arrows run one way."""
from __future__ import annotations

import ast
from pathlib import Path

import covkernels

PACKAGE = Path(covkernels.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over covkernels' .py files; the compiled ``covkernels._C`` is a leaf.
    Edges to the package itself (``from . import __version__``) are left out: importing any submodule
    runs the package's ``__init__`` first anyway."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: set() for name in files}
    graph["covkernels._C"] = set()
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in graph else module for a in node.names]
            graph[name].update(t for t in targets if t in graph and t not in (name, "covkernels"))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_covkernels_modules():
    graph = import_graph()
    assert "covkernels.ops.dispatch" in graph and "covkernels._extension" in graph["covkernels.ops.dispatch"]
    assert "covkernels._extension" in graph["covkernels.executor"]
    assert cycles(graph) == []
