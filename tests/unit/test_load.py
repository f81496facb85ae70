"""--handler names: built-ins, module:function, file.py:function, and every failure."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkserve._errors import EXIT_USAGE, HandlerError
from forkserve.child.builtins import chargen
from forkserve.child.handler import echo
from forkserve.config.handler import load_handler


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A scratch directory as the current directory; modules made there are forgotten."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_builtins_by_name() -> None:
    assert load_handler("echo") is echo
    assert load_handler("chargen") is chargen


def test_module_function_from_the_current_directory(modules: Path) -> None:
    (modules / "myhandlers.py").write_text("def handle(conn, peer):\n    return 'ok'\n")
    handler = load_handler("myhandlers:handle")
    assert handler(None, None) == "ok"  # type: ignore[arg-type]


def test_dotted_attribute_and_package(modules: Path) -> None:
    (modules / "pkg").mkdir()
    (modules / "pkg" / "__init__.py").write_text("")
    (modules / "pkg" / "mod.py").write_text(
        "class Service:\n    @staticmethod\n    def handle(conn, peer):\n        return 7\n"
    )
    assert load_handler("pkg.mod:Service.handle")(None, None) == 7  # type: ignore[arg-type]


def test_file_path(modules: Path) -> None:
    sub = modules / "sub"
    sub.mkdir()
    (sub / "helper.py").write_text("VALUE = 42\n")
    (sub / "app.py").write_text("import helper\ndef handle(conn, peer):\n    return helper.VALUE\n")
    assert load_handler("sub/app.py:handle")(None, None) == 42  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuch", "unknown handler 'nosuch'"),
        ("examples.kv", "unknown handler"),
        (":handle", "invalid handler"),
        ("mod:", "invalid handler"),
        ("no_such_module_here:handle", "cannot import handler module .* not found"),
        ("missing.py:handle", "no such file"),
    ],
)
def test_malformed_or_missing(modules: Path, spec: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message) as info:
        load_handler(spec)
    assert info.value.exit_code == EXIT_USAGE
    assert "\n" not in str(info.value)


def test_missing_attribute_and_not_callable(modules: Path) -> None:
    (modules / "things.py").write_text("NUMBER = 3\n")
    with pytest.raises(HandlerError, match="has no 'handle'"):
        load_handler("things:handle")
    with pytest.raises(HandlerError, match=r"not callable .*int"):
        load_handler("things:NUMBER")


def test_module_that_raises_on_import(modules: Path) -> None:
    (modules / "broken.py").write_text("raise ValueError('bad config\\nsecond line')\n")
    with pytest.raises(HandlerError, match=r"'broken' failed: ValueError: bad config$") as info:
        load_handler("broken:handle")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(HandlerError, match="ValueError"):
        load_handler("broken.py:handle")
    assert "broken" not in sys.modules


def test_module_whose_own_import_is_missing(modules: Path) -> None:
    (modules / "needy.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(HandlerError, match="'needy' failed: ModuleNotFoundError"):
        load_handler("needy:handle")


def test_module_that_exits_on_import(modules: Path) -> None:
    (modules / "quitter.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(HandlerError, match="SystemExit: 3"):
        load_handler("quitter:handle")
