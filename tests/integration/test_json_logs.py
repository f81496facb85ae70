"""--log-format json: one object per line, with the same events and fields as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import connect, echo_roundtrip, parse_line

FAILING = "def handle(conn, peer):\n    raise KeyError('boom')\n"


def json_records(lines: list[str]) -> list[dict[str, object]]:
    """Every line of the log as a JSON object: fails if one is anything else."""
    return [json.loads(line) for line in lines if line != "<eof>"]


def one_connection(serve: ServerFactory, *args: str) -> list[str]:
    """Serve one echo connection, stop, and return the log lines."""
    server = serve(*args)
    assert echo_roundtrip(server.port, b"hello") == b"hello"
    server.wait_event("end")
    assert server.stop() == 0
    return [line for line in server.lines if line != "<eof>"]


def shape(event: str, fields: object) -> tuple[str, tuple[str, ...]]:
    return event, tuple(sorted(str(key) for key in fields))  # type: ignore[attr-defined]


def test_json_lines_carry_the_text_lines_fields(serve: ServerFactory) -> None:
    text = [parse_line(line) for line in one_connection(serve)]
    records = json_records(one_connection(serve, "--log-format", "json"))
    text_shapes = {shape(event, fields) for event, fields in filter(None, text)}
    json_shapes = {
        shape(str(r["event"]), [k for k in r if k not in ("ts", "event")]) for r in records
    }
    assert json_shapes == text_shapes
    assert records[-1]["event"] == "stopped"
    assert all(str(r["ts"]).endswith("Z") for r in records)
    accept = next(r for r in records if r["event"] == "accept")
    assert isinstance(accept["pid"], int)
    assert str(accept["peer"]).startswith("127.0.0.1:")


RAISES_PEER_BYTES = (
    "def handle(conn, peer):\n    raise ValueError(conn.recv(100).decode('latin-1'))\n"
)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_traceback_shows_peer_bytes_escaped(
    serve: ServerFactory, tmp_path: Path, log_format: str
) -> None:
    """A handler's exception may carry the client's bytes: a terminal escape sequence
    must not reach the log raw, in the text traceback either."""
    (tmp_path / "raises.py").write_text(RAISES_PEER_BYTES)
    server = serve("--log-format", log_format, "--handler", f"{tmp_path}/raises.py:handle")
    with connect(server.port) as sock:
        sock.sendall(b"\x1b]0;owned\x07\x1b[2J\r\x85")
        assert sock.recv(10) == b""
    server.wait_event("end", exit=1)
    assert server.stop() == 0
    log = "\n".join(server.lines)
    assert not any(c in log for c in "\x1b\x07\r\x85")
    if log_format == "text":  # Python's traceback, its control characters escaped
        assert "ValueError: \\x1b]0;owned\\x07\\x1b[2J\\r\\x85" in server.lines
    else:
        (error,) = [r for r in json_records(server.lines) if r["event"] == "handler-error"]
        assert error["error"] == "ValueError: \x1b]0;owned\x07\x1b[2J\r\x85"


def test_handler_traceback_is_one_json_event(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    server = serve("--log-format", "json", "--handler", f"{tmp_path}/failing.py:handle")
    with connect(server.port) as sock:
        assert sock.recv(10) == b""
    server.wait_event("end", exit=1)
    assert server.stop() == 0
    errors = [r for r in json_records(server.lines) if r["event"] == "handler-error"]
    assert len(errors) == 1
    assert errors[0]["error"] == "KeyError: 'boom'"
    assert "Traceback" in str(errors[0]["traceback"])
