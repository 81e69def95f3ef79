"""The package's modules import one another without a circle (issue 12): each side stands
on the ones below it, so any module can be read, imported and tested from the bottom up."""

from __future__ import annotations

import ast
from pathlib import Path

import zmqexecutor

PACKAGE = Path(zmqexecutor.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (functions and
    ``TYPE_CHECKING`` blocks included: a circle through them is still a circle to a reader)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zmqexecutor"):
            parts = (node.module or "").split(".")
            names = parts[1:2] or [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("zmqexecutor.")]
        else:
            continue
        found.update(n.split(".")[0] for n in names)
    return {m for m in found if (PACKAGE / f"{m}.py").exists() and m != path.stem}


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (module -> the modules it imports), or []."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for dep in sorted(graph[module]):
            if circle := visit(dep):
                return circle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        if circle := visit(module):
            return circle
    return []


def test_find_circle_finds_one() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    graph = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py")}
    assert graph["executor"] >= {"_dispatcher"}, "the walk found no imports at all"
    assert find_circle(graph) == [], " -> ".join(find_circle(graph))
