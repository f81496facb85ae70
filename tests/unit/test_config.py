"""--banner text: escapes decoded, nothing added."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkserve._errors import UsageError
from forkserve.core.escapes import escape_banner, parse_banner


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("", b""),
        ("220 ready", b"220 ready"),
        ("220 ready\\r\\n", b"220 ready\r\n"),
        ("a\\tb\\0c\\\\d", b"a\tb\0c\\d"),
        ("\\x41\\xfF", b"A\xff"),
        ("caf\u00e9", "caf\u00e9".encode()),
        ("raw\udcff", b"raw\xff"),  # an undecodable argv byte passes through
    ],
)
def test_banner_escapes(text: str, data: bytes) -> None:
    assert parse_banner(text) == data


@pytest.mark.parametrize("text", ["\\", "end\\", "\\q", "\\x4", "\\xZZ", "\\u0041"])
def test_bad_escapes_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid escape"):
        parse_banner(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\\qb", "invalid escape '\\q': use"),
        ("\\xZZ!", "invalid escape '\\xZZ': use"),
        ("ok\\x4", "invalid escape '\\x4': use"),
        ("\\\x07", "invalid escape '\\\\x07': use"),  # a control character, shown escaped
        ("end\\", "invalid escape: a \\ ends the text"),
    ],
)
def test_a_bad_escape_is_shown_alone_and_once(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_banner(text)
    assert str(info.value).startswith(message)
    assert "--banner" not in str(info.value)  # the caller names the option or the key


@given(st.binary())
def test_escape_then_parse_round_trips(data: bytes) -> None:
    assert parse_banner(escape_banner(data)) == data


@given(st.text())
def test_parse_never_raises_anything_but_usage_error(text: str) -> None:
    try:
        parse_banner(text)
    except UsageError:
        pass
