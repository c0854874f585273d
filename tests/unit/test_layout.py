"""The house rules of the package layout (issue 14), kept by a test so that they stay true: no module over 400
lines, no function over 60, no import cycle (``TYPE_CHECKING`` imports included: a loop there means two
modules want to be one, or a third), and no ``_private`` module imported from outside its own package."""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edgecrab"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@functools.cache
def modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package, parsed once for all the tests here (a parse of them all takes 0.6 s)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text("utf-8")))
    return found


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The edgecrab modules ``name`` imports (``from pkg import submodule`` counts as the submodule)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("edgecrab"):
                continue
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edgecrab")}
    return (found & known) - {name}


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n for name, (path, _) in modules().items()
        if (n := path.read_text("utf-8").count("\n")) > MAX_MODULE_LINES
    }
    assert long == {}, "split these along a seam a newcomer would name"


def test_no_function_is_over_60_lines() -> None:
    long = []
    for name, (_, tree) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}")
    assert long == []


def test_no_import_cycle() -> None:
    found = modules()
    known = set(found)
    graph = {name: imports(name, tree, known) for name, (_, tree) in found.items()}
    # A module importing its own package's __init__ (which re-exports it) is not a loop between two rooms.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state[target] == 1:
                cycles.append(path[path.index(target):] + [target])
            elif state[target] == 0:
                visit(target)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name)
    assert cycles == []


def test_private_modules_stay_inside_their_package() -> None:
    """A ``_private`` module is imported only by its siblings (the modules of the same package)."""
    found = modules()
    crossing = []
    for name, (path, tree) in found.items():
        home = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target in imports(name, tree, set(found)):
            package, _, leaf = target.rpartition(".")
            if leaf.startswith("_") and leaf != "__main__" and home != package:
                crossing.append(f"{name} -> {target}")
    assert crossing == []
