"""The import graph of src/forkserve, read with ``ast`` (for the architecture tests).

An edge A -> B means module A imports module B somewhere: at the top, or inside a
function (it runs when the function does). Imports under ``if TYPE_CHECKING:`` are left
out, whether the name is ``typing.TYPE_CHECKING`` or the module's own
``TYPE_CHECKING = False`` (how the parent keeps ``typing`` out): they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import forkserve

SRC = Path(forkserve.__file__).parent
PACKAGE = "forkserve"


def module_name(path: Path) -> str:
    """The dotted name of a file under SRC (``forkserve.core.rules``)."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _run_time_nodes(tree: ast.AST, type_checking: bool = False) -> Iterator[ast.AST]:
    """Every node that can run, skipping the bodies of ``if TYPE_CHECKING:`` (unless
    ``type_checking``: then every node)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, type_checking: bool = False) -> set[str]:
    """The dotted names a module imports at run time, stdlib included.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (c may be a module); the caller
    keeps the names that are modules.
    """
    names: set[str] = set()
    for node in _run_time_nodes(tree, type_checking):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def graph(type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the project's modules it imports at run time (with ``type_checking``,
    also those it imports for the type checker only)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        imported = imported_names(ast.parse(path.read_text(), str(path)), type_checking)
        edges[name] = {other for other in imported if other in known and other != name}
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The import cycles: each strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            members: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.add(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(frozenset(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found
