"""The pure modules do no I/O: checked by their imports (STYLE.md: sans-IO)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forkserve

PURE = [
    "core/address.py",
    "core/logline.py",
    "_errors.py",
    "core/ucspi.py",
    "core/escapes.py",
    "core/metrics.py",
    "core/activation.py",
    "config/settings.py",
    "core/rules.py",
    "core/gate.py",
    "core/proxy.py",
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
