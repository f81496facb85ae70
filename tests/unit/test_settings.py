"""The settings table: TOML validation, reload classification, generated docs."""

from __future__ import annotations

import ast
import types
import typing
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
        ({"mode": "spawn"}, "mode: expected one of fork, prefork, async, not 'spawn'"),
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


def test_the_typed_settings_follow_the_table() -> None:
    """Each row of the table is an attribute of Settings with its name, or is folded
    into one (FOLDED); Settings has nothing the table does not give it."""
    from forkserve.config.values import FOLDED, Settings

    rows = {setting.dest for setting in SERVE}
    slots = set(Settings.__slots__)
    assert set(Settings.__annotations__) == slots
    assert set(FOLDED) <= rows
    assert rows - set(FOLDED) <= slots, "a table row without its Settings attribute"
    assert slots - rows <= set(FOLDED.values()), "a Settings attribute no row sets"
    defaults = Settings()
    for setting in SERVE:
        if setting.dest in slots and setting.default is not None:
            assert getattr(defaults, setting.dest) == setting.default, setting.key


def test_the_command_line_defaults_are_the_python_api_defaults() -> None:
    from forkserve.config.options import Configuration, server_settings
    from forkserve.config.values import DEFAULTS, Settings

    cli = server_settings(Configuration({}, None).resolve())
    api = Settings()
    assert {name: getattr(cli, name) for name in DEFAULTS} == {
        name: getattr(api, name) for name in DEFAULTS
    }


def test_settings_refuse_an_unknown_name_and_copy_on_replace() -> None:
    from forkserve.config.values import Settings

    with pytest.raises(TypeError, match="'colour'"):
        Settings(colour="blue")  # type: ignore[call-arg]
    first = Settings(max_conns=5)
    second = first.replace(grace=1.0)
    assert (first.max_conns, first.grace) == (5, 10.0)
    assert (second.max_conns, second.grace) == (5, 1.0)
    assert repr(second) == "Settings(max_conns=5, grace=1.0)"


def annotated(source: str, name: str) -> dict[str, str]:
    """The annotated attributes of class ``name`` in ``source``, as written."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError(f"no class {name}")


def test_the_keyword_types_are_the_attribute_types() -> None:
    """``Options`` (for type checkers: Server's and Settings' keywords) says what
    ``Settings`` says, name for name and type for type."""
    import forkserve.config.values as module

    source = Path(module.__file__).read_text()
    assert annotated(source, "Options") == annotated(source, "Settings")
    assert set(annotated(source, "Settings")) == set(module.DEFAULTS)


def conforms(value: object, hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, float)
    return isinstance(value, origin or hint)  # type: ignore[arg-type]


def test_the_command_line_gives_each_attribute_its_type(tmp_path: Path) -> None:
    from collections.abc import Mapping, Sequence

    from forkserve.config.options import Configuration, server_settings
    from forkserve.config.values import DEFAULTS, Settings
    from forkserve.core.rules import RuleSet

    rules = tmp_path / "rules"
    rules.write_text("10.0.0.0/8:deny\n")
    config = tmp_path / "f.toml"
    config.write_text(
        'listen = "[::1]:0"\nmode = "prefork"\nmax-workers = 9\nrate = "5/2"\n'
        'proxy-protocol = "v2"\nproxy-from = ["10.0.0.0/8"]\nmetrics = 9100\n'
        f'rules = "{rules}"\nlimit-nofile = 64\nbanner = "hi"\nlog-format = "json"\n'
        'per-ip = 3\nidle-timeout = 2\nuser = "nobody"\ntls-cert = "c.pem"\n'
    )
    given = server_settings(Configuration({"verbose": True}, str(config)).resolve())
    default = server_settings(Configuration({}, None).resolve())
    names = {"Sequence": Sequence, "Mapping": Mapping, "RuleSet": RuleSet}
    hints = typing.get_type_hints(Settings, globalns=names)
    for settings in (given, default):
        for name in DEFAULTS:
            value = getattr(settings, name)
            assert conforms(value, hints[name]), f"{name}: {value!r} is no {hints[name]}"
    assert (given.rate, given.log_level, given.metrics) == ((5, 2.0), 2, ("127.0.0.1", 9100))
