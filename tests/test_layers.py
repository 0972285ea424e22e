"""The module graph of ``vast/``: subpackages import only downward, and no module imports itself in a circle.

Every import counts, including the ones inside functions and under ``TYPE_CHECKING``: a lazy import
is still a dependency. The layers, bottom to top, are what ARCHITECTURE.md shows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vast

ROOT = Path(vast.__file__).parent
# Bottom to top: a module may import its own layer and the ones below it.
LAYERS = ["config", "model", "shards", "pipeline", "captioners", "report", "train", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module → the ``vast`` modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "cli"
    return LAYERS.index(top)


def test_every_subpackage_has_a_layer():
    for module in imports():
        if module != "vast":
            assert module.split(".")[1] in LAYERS, f"{module}: give its subpackage a layer"


def test_no_subpackage_imports_one_above_it():
    upward = [f"{m} -> {d}" for m, deps in imports().items() if m != "vast"
              for d in deps if d != "vast" and layer(d) > layer(m)]
    assert upward == []


def test_no_import_circles():
    graph = imports()
    # a package importing its own submodules (``vast.model`` re-exports) is not a circle
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []
