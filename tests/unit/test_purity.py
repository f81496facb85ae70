"""The pure modules do no I/O: checked by their imports, followed (STYLE.md: sans-IO).

Every module in core/ is pure, and so are the few listed in PURE_OUTSIDE_CORE. A pure
module may import only other pure modules of forkserve and the standard library minus
the modules that do I/O or read the clock, at the top or inside a function; only what
sits under ``if TYPE_CHECKING:`` is exempt (it never runs).
"""

from __future__ import annotations

import ast
import sys

import pytest

from tests.unit.importgraph import PACKAGE, imported_names, modules

PURE_OUTSIDE_CORE = {"forkserve._errors", "forkserve.config.settings"}
# The standard library's I/O, processes, clock and event loops.
FORBIDDEN = {
    "asyncio",
    "io",
    "mmap",
    "os",
    "pathlib",
    "select",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
    "time",
}
ALL = modules()
PURE = sorted(
    name for name in ALL if name.startswith(f"{PACKAGE}.core") or name in PURE_OUTSIDE_CORE
)


def test_the_core_is_walked_not_listed() -> None:
    assert f"{PACKAGE}.core.proxy" in PURE
    assert f"{PACKAGE}.core.rules" in PURE
    assert len([name for name in PURE if ".core." in name]) == len(
        [name for name in ALL if name.startswith(f"{PACKAGE}.core.")]
    )


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_io(name: str) -> None:
    tree = ast.parse(ALL[name].read_text())
    impure = []
    for imported in sorted(imported_names(tree)):
        top = imported.split(".")[0]
        if top == PACKAGE:
            if imported in ALL and imported not in PURE:
                impure.append(imported)
        elif top not in sys.stdlib_module_names or top in FORBIDDEN:
            impure.append(imported)
    assert impure == [], f"{name} imports {impure}"
