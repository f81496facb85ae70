"""The examples' protocol cores, without sockets."""

from __future__ import annotations

import pytest
from examples.httpd import respond
from examples.kv import Session

PEER = ("192.0.2.1", 4000)


def test_kv_session() -> None:
    session = Session()
    assert session.command("SET k v with spaces\r\n") == "OK"
    assert session.command("get k") == "VALUE v with spaces"
    assert session.command("SET k2 \n") == "OK"
    assert session.command("KEYS") == "KEYS k k2"
    assert session.command("DEL k") == "DELETED"
    assert session.command("DEL k") == "NOT_FOUND"
    assert session.command("GET k") == "NOT_FOUND"
    assert not session.closed
    assert session.command("QUIT") == "BYE"
    assert session.closed


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("", "ERROR unknown command ''"),
        ("SET", "ERROR usage: SET key value"),
        ("FLY away", "ERROR unknown command 'FLY'"),
        ("__init__ x", "ERROR unknown command '__init__'"),
        ("COMMAND x", "ERROR unknown command 'COMMAND'"),
    ],
)
def test_kv_errors(line: str, reply: str) -> None:
    assert Session().command(line) == reply


def test_kv_sessions_are_separate() -> None:
    first, second = Session(), Session()
    first.command("SET a 1")
    assert second.command("GET a") == "NOT_FOUND"


@pytest.mark.parametrize(
    ("head", "status", "send_body"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", 200, True),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200, False),
        (b"GET /nope HTTP/1.0\r\n\r\n", 404, True),
        (b"POST / HTTP/1.0\r\n\r\n", 405, True),
        (b"GET /\r\n\r\n", 400, True),
        (b"hello\n\n", 400, True),
        (None, 400, True),
    ],
)
def test_httpd_responses(head: bytes | None, status: int, send_body: bool) -> None:
    got_status, body, got_send = respond(head, PEER)
    assert (got_status, got_send) == (status, send_body)
    assert body.endswith(b"\n")


def test_httpd_page_names_the_peer() -> None:
    _, body, _ = respond(b"GET / HTTP/1.0\r\n\r\n", PEER)
    assert b"you are 192.0.2.1 port 4000" in body
