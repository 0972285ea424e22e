"""The failure classes users can see are exactly the ones README's table documents."""

import ast
import re
from pathlib import Path

from vast.pipeline.fetch import _CLASS_PATTERNS
from vast.pipeline.stage import ERROR_CLASSES

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_table_documents_exactly_the_error_classes():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| class | meaning |"):]
    table = table[:table.index("\n\n")]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert len(documented) == len(set(documented)) and sorted(documented) == sorted(ERROR_CLASSES)


def _strings(node: ast.AST | None, names: dict[str, set[str]]) -> set[str]:
    """The string constants an expression can be: a literal, ``a if c else b``, or a local name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body, names) | _strings(node.orelse, names)
    if isinstance(node, ast.Name):
        return names.get(node.id, set())
    return set()


def test_every_class_a_stage_raises_is_a_documented_one():
    raised = {cls for cls, _ in _CLASS_PATTERNS}
    for path in (ROOT / "vast").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names: dict[str, set[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                names.setdefault(node.targets[0].id, set()).update(_strings(node.value, {}))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name == "SampleError" and node.args:
                raised |= _strings(node.args[0], names)
            elif name == "fail" and len(node.args) > 1:
                raised |= _strings(node.args[1], names)
    assert {"out_of_memory", "stage_error", "decode_error"} <= raised
    assert raised <= set(ERROR_CLASSES), raised - set(ERROR_CLASSES)
