"""The systemd protocols as data: LISTEN_* parsing, NOTIFY_SOCKET, messages."""

from __future__ import annotations

import pytest

from forkserve._errors import UsageError
from forkserve.core.activation import (
    choose_sockets,
    notify_address,
    notify_message,
    parse_listen_fds,
)


def test_listen_fds_for_this_process() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "http:metrics"}
    assert parse_listen_fds(env, 42) == [(3, "http"), (4, "metrics")]
    assert parse_listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": "42"}, 42) == [(3, "unknown")]


def test_listen_fds_for_another_process_or_none() -> None:
    assert parse_listen_fds({}, 42) == []
    assert parse_listen_fds({"LISTEN_FDS": "1", "LISTEN_PID": "7"}, 42) == []


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_FDS": "1"},
        {"LISTEN_FDS": "x", "LISTEN_PID": "42"},
        {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "one"},
    ],
)
def test_malformed_listen_variables(env: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        parse_listen_fds(env, 42)


def test_choose_sockets() -> None:
    assert choose_sockets([]) == (None, None)
    assert choose_sockets([(3, "a")]) == (3, None)
    assert choose_sockets([(3, "metrics"), (4, "web")]) == (4, 3)
    with pytest.raises(UsageError, match="2 listening sockets"):
        choose_sockets([(3, "a"), (4, "b")])


def test_notify_address() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abstract") == b"\0abstract"
    for bad in ("relative", "@", "vsock:2:1234"):
        with pytest.raises(UsageError):
            notify_address(bad)


def test_notify_message() -> None:
    assert notify_message({"READY": 1, "STATUS": "a\nb"}) == b"READY=1\nSTATUS=a b"
