"""The pure modules do no I/O: checked by their imports (STYLE.md: sans-IO)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forkserve

PURE = [
    "_address.py",
    "_events.py",
    "_errors.py",
    "_ucspi.py",
    "_config.py",
    "_metrics.py",
    "_activation.py",
    "_settings.py",
    "_rules.py",
    "_limits.py",
    "_proxy.py",
]
FORBIDDEN = {"socket", "os", "signal", "selectors", "time", "subprocess", "threading"}
SRC = Path(forkserve.__file__).parent


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_io(name: str) -> None:
    tree = ast.parse((SRC / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
