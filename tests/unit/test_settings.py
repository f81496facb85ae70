"""The settings table: TOML validation, reload classification, generated docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkserve._errors import UsageError
from forkserve.config.settings import changes, validate_table
from forkserve.config.table import SERVE, SERVE_BY_KEY, render_docs

DOCS = Path(__file__).parent.parent.parent / "docs" / "options.md"


def check(table: dict[str, object]) -> dict[str, object]:
    return validate_table(table, SERVE_BY_KEY, "f.toml")


def test_good_values_are_converted() -> None:
    assert check({"max-conns": 5, "grace": 1, "banner": "hi\\r\\n", "listen": "[::1]:0"}) == {
        "max_conns": 5,
        "grace": 1.0,
        "banner": b"hi\r\n",
        "listen": ("::1", 0),
    }
    assert check({"listen": 9000, "program": ["cat", "-u"], "quiet": True}) == {
        "listen": ("127.0.0.1", 9000),
        "program": ["cat", "-u"],
        "quiet": True,
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_conns": 5}, "unknown setting 'max_conns' (did you mean 'max-conns'?)"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
        ({"max-conns": 0}, "max-conns: expected 1 or more, not 0"),
        ({"max-conns": "5"}, "max-conns: expected a whole number, 1 or more, not str"),
        ({"max-conns": True}, "max-conns: expected a whole number, 1 or more, not a boolean"),
        ({"grace": -1}, "grace: expected 0 or more seconds"),
        ({"mode": "spawn"}, "mode: expected one of fork, prefork, not 'spawn'"),
        ({"quiet": "yes"}, "quiet: expected true or false, not str"),
        ({"banner": "\\q"}, "banner: invalid escape"),
        ({"listen": "[::1"}, "listen: invalid address"),
        ({"program": []}, "program: expected a non-empty list of strings"),
        ({"program": "cat"}, "program: expected a list of strings, not str"),
    ],
)
def test_bad_values_name_the_key_and_the_reason(table: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        check(table)
    assert str(info.value).startswith("f.toml: ")
    assert message in str(info.value)


def test_changes_split_reloadable_from_upgrade() -> None:
    old = {"max_conns": 1, "grace": 1.0, "handler": None, "banner": b""}
    new = {"max_conns": 2, "grace": 1.0, "handler": "x:y", "banner": b""}
    assert changes(old, new, SERVE) == ({"max_conns": 2}, ["handler"])


def test_every_setting_is_documented_and_the_docs_are_current() -> None:
    assert DOCS.read_text() == render_docs(), (
        "run: python -m forkserve.config.table > docs/options.md"
    )
    for setting in SERVE:
        assert f"`{setting.key}`" in DOCS.read_text()


def test_the_example_config_file_is_valid() -> None:
    from forkserve.config.options import read_config

    example = DOCS.parent / "systemd" / "forkserve.toml"
    assert read_config(str(example))["listen"] == ("127.0.0.1", 7000)
