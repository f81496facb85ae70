"""Guard rails on the shape of the code (issue 13), checked with ``ast``.

No class derives from two of the project's own classes (composition, not mixins);
no module over MAX_MODULE_LINES lines (a declarative table may be longer); no
function over MAX_FUNCTION_LINES lines, counted from its ``def`` (decorators
included) to its last line, without its docstring.

Today's offenders are listed by name with their size. The lists only shrink: a
listed offender that is fixed (or shrinks) fails the test until its line is
deleted or lowered, so the lists say what is true.
"""

from __future__ import annotations

import ast

from tests.unit.importgraph import modules

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 40
# Declarative tables: long by nature, one entry after another.
TABLES = {"forkserve.config.table"}

# module: its line count today.
LONG_MODULES: dict[str, int] = {}
# "module.function" (or "module.Class.method"): its length today.
LONG_FUNCTIONS = {
    "forkserve.config.options.add_argument": 45,  # one argparse call per kind of setting
}
# "module.Class": its project bases today.
MIXED_CLASSES: dict[str, tuple[str, ...]] = {}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _docstring_lines(node: Function) -> int:
    first = node.body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        return 0
    if not isinstance(first.value.value, str):
        return 0
    return (first.end_lineno or first.lineno) - first.lineno + 1


def function_length(node: Function) -> int:
    """Lines from the ``def`` (or its first decorator) to the end, minus the docstring."""
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return (node.end_lineno or node.lineno) - start + 1 - _docstring_lines(node)


def _walk(node: ast.AST, prefix: str) -> list[tuple[str, ast.AST]]:
    """Every function and class below ``node``, with its dotted name."""
    found: list[tuple[str, ast.AST]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}.{child.name}"
            found.append((name, child))
            found.extend(_walk(child, name))
        else:
            found.extend(_walk(child, prefix))
    return found


def definitions() -> list[tuple[str, ast.AST]]:
    return [
        item
        for name, path in modules().items()
        for item in _walk(ast.parse(path.read_text(), str(path)), name)
    ]


def long_modules() -> dict[str, int]:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    return {
        name: size for name, size in sizes.items() if size > MAX_MODULE_LINES and name not in TABLES
    }


def long_functions() -> dict[str, int]:
    return {
        name: length
        for name, node in definitions()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := function_length(node)) > MAX_FUNCTION_LINES
    }


def mixed_classes(found: list[tuple[str, ast.AST]]) -> dict[str, tuple[str, ...]]:
    """The classes among ``found`` with more than one base among ``found``'s classes."""
    classes = [(name, node) for name, node in found if isinstance(node, ast.ClassDef)]
    ours = {node.name for _, node in classes}
    mixed = {}
    for name, node in classes:
        bases = tuple(ast.unparse(base).rpartition(".")[2] for base in node.bases)
        own = tuple(base for base in bases if base in ours)
        if len(own) > 1:
            mixed[name] = own
    return mixed


def test_no_module_over_the_limit() -> None:
    assert long_modules() == LONG_MODULES


def test_no_function_over_the_limit() -> None:
    assert long_functions() == LONG_FUNCTIONS


def test_no_class_derives_from_two_of_ours() -> None:
    assert mixed_classes(definitions()) == MIXED_CLASSES


def test_the_measures() -> None:
    """The measures themselves, on code written here."""
    tree = ast.parse(
        "class A: pass\nclass B: pass\nclass C(A, B): pass\nclass D(A, object): pass\n"
        '@deco\ndef f():\n    """Doc,\n    two lines."""\n    x = 1\n    return x\n'
    )
    f = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    assert function_length(f) == 4  # the decorator, the def and two statements
    names = [name for name, _ in _walk(tree, "m")]
    assert names == ["m.A", "m.B", "m.C", "m.D", "m.f"]
    assert mixed_classes(_walk(tree, "m")) == {"m.C": ("A", "B")}
