from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forkserve._errors import AddressError
from forkserve.core.address import (
    format_address,
    format_unix_address,
    host_of,
    parse_listen,
    parse_listen_address,
    parse_port,
    parse_unix_address,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9000", ("127.0.0.1", 9000)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::]:9000", ("::", 9000)),
        ("[::1]:0", ("::1", 0)),
        ("[fe80::1%eth0]:22", ("fe80::1%eth0", 22)),
        ("localhost:65535", ("localhost", 65535)),
        (" 127.0.0.2:7 ", ("127.0.0.2", 7)),
    ],
)
def test_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("65536", "invalid port"),
        ("-1", "invalid port"),
        ("+80", "invalid port"),
        ("٣", "invalid port"),  # a digit, but not an ASCII one
        ("::1:80", "brackets"),
        ("[::1]80", "expected ':PORT'"),
        ("[::1", "missing ']'"),
        ("[1.2.3.4]:80", "invalid IPv6"),
        (":80", "empty host"),
        ("a b:80", "invalid host"),
        ("host:", "invalid port"),
    ],
)
def test_invalid(text: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        parse_listen_address(text)


@given(st.text())
def test_only_address_errors_escape(text: str) -> None:
    try:
        host, port = parse_listen_address(text)
    except AddressError:
        return
    assert 0 <= port <= 65535
    assert host


@given(st.integers(0, 65535))
def test_ports_round_trip(port: int) -> None:
    assert parse_port(str(port)) == port


def test_format_address() -> None:
    assert format_address(("1.2.3.4", 5)) == "1.2.3.4:5"
    assert format_address(("::1", 5, 0, 0)) == "[::1]:5"
    assert format_address("/run/x.sock") == "/run/x.sock"
    assert format_address(b"") == "unix"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/x.sock", "/run/x.sock"),
        (" unix:relative.sock ", "relative.sock"),
        ("unix:@name", b"\0name"),
        ("unix:/" + "p" * 106, "/" + "p" * 106),  # 107 bytes: sun_path less its NUL
        ("unix:@" + "n" * 107, b"\0" + b"n" * 107),
    ],
)
def test_unix_addresses(text: str, expected: str | bytes) -> None:
    assert parse_unix_address(text) == expected
    assert parse_listen(text) == text.strip()
    assert format_unix_address(expected) == text.strip()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("unix:", "empty Unix socket address"),
        ("unix:@", "empty Unix socket address"),
        ("unix:/" + "p" * 107, "too long (108 bytes, at most 107)"),
        ("unix:@" + "é" * 54, "too long (108 bytes"),  # bytes, not characters, count
        ("unix:/a\0b", "NUL byte"),
    ],
)
def test_bad_unix_addresses(text: str, reason: str) -> None:
    with pytest.raises(AddressError, match=re.escape(reason)):
        parse_unix_address(text)
    with pytest.raises(AddressError, match=re.escape(reason)):
        parse_listen(text)


def test_unix_peers_are_credentials() -> None:
    assert format_address((4242, 1000, 100)) == "pid:4242,uid:1000,gid:100"
    assert host_of((4242, 1000, 100)) == "pid:4242,uid:1000,gid:100"
    assert host_of(("10.0.0.1", 5)) == "10.0.0.1"
    assert format_address(("10.0.0.1", 5)) == "10.0.0.1:5"
