"""The PROXY protocol end to end: the header's address replaces the balancer's."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from forkserve.core.proxy import SIGNATURE
from forkserve.core.proxynet import encode_v1, encode_v2
from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all, recv_exactly, run_cli

DATA = Path(__file__).parents[1] / "data"
ENV_PROGRAM = ["sh", "-c", "env | LC_ALL=C sort"]


def cut(sock: socket.socket) -> bool:
    """Whether the server closed without a byte: EOF, or a reset when our unread
    bytes were still in its buffer (TCP sends RST then)."""
    try:
        return recv_all(sock) == b""
    except ConnectionResetError:
        return True


def read_env(port: int, header: bytes, first: bytes = b"") -> dict[str, str]:
    with connect(port) as sock:
        sock.sendall(header + first)
        sock.shutdown(socket.SHUT_WR)
        text = recv_all(sock).decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_handler_sees_the_header_address_and_echo_is_untouched(
    serve: ServerFactory, version: str, mode: str
) -> None:
    handler = "tests.data.api_server:peer_echo"
    if mode == "async":  # the writer's peername: see asyncmode.connection.Writer
        handler = "tests.data.async_handlers:peer_echo"
    server = serve("--proxy-protocol", version, "--handler", handler)
    header = (encode_v1 if version == "v1" else encode_v2)(("203.0.113.7", 4242), ("10.0.0.1", 80))
    with connect(server.port) as sock:
        sock.sendall(header + b"PROXY hello")  # a client byte that looks like a header
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"203.0.113.7:4242 PROXY hello"
    (line,) = server.wait_event("proxy")
    assert line["peer"] == "203.0.113.7:4242"
    assert line["via"].startswith("127.0.0.1:")


def test_exec_environment_uses_the_header_and_first_byte_stays(
    start_server: ServerFactory,
) -> None:
    program = ["sh", "-c", "head -c 5; echo; env | LC_ALL=C sort"]
    server = start_server("--proxy-protocol", "any", "--", *program)
    env = read_env(server.port, encode_v2(("2001:db8::7", 5555), ("2001:db8::1", 443)), b"first")
    assert env["TCPREMOTEIP"] == "2001:db8::7"
    assert env["TCPREMOTEPORT"] == "5555"
    assert env["TCPLOCALIP"] == "2001:db8::1"
    assert env["TCPLOCALPORT"] == "443"
    assert env["PROTO"] == "TCP6"
    with connect(server.port) as sock:
        sock.sendall(encode_v1(("192.0.2.1", 1), ("192.0.2.2", 2)) + b"first")
        sock.shutdown(socket.SHUT_WR)
        assert recv_exactly(sock, 6) == b"first\n"


def test_local_command_is_served_with_the_real_peer(serve: ServerFactory) -> None:
    server = serve("--proxy-protocol", "v2")
    with connect(server.port) as sock:
        sock.sendall(encode_v2(None, None) + b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ping"
    (line,) = server.wait_event("proxy")
    assert line["command"] == "LOCAL"
    assert line["peer"] == line["via"]


V4_ADDRESSES = bytes([203, 0, 113, 9, 10, 0, 0, 1]) + (4242).to_bytes(2, "big") + b"\x00\x50"


@pytest.mark.parametrize(
    ("command", "family", "block"),
    [
        (0x20, 0x11, b""),  # LOCAL naming TCP over IPv4, with no address: a health check
        (0x20, 0x12, V4_ADDRESSES),  # LOCAL naming UDP: the family is ignored
        (0x21, 0x10, V4_ADDRESSES),  # PROXY with an UNSPEC transport: addresses ignored
    ],
)
def test_headers_without_usable_addresses_keep_the_real_peer(
    serve: ServerFactory, command: int, family: int, block: bytes
) -> None:
    server = serve("--proxy-protocol", "v2", "--handler", "tests.data.api_server:peer_echo")
    header = SIGNATURE + bytes([command, family]) + len(block).to_bytes(2, "big") + block
    with connect(server.port) as sock:
        sock.sendall(header + b"ping")
        sock.shutdown(socket.SHUT_WR)
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
        assert recv_all(sock) == f"{peer} ping".encode()
    (line,) = server.wait_event("proxy")
    assert line["peer"] == line["via"] == peer
    assert line["command"] == ("LOCAL" if command == 0x20 else "PROXY")
    assert server.events("reject") == []


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_huge_authority_is_logged_capped_and_escaped(
    serve: ServerFactory, log_format: str
) -> None:
    """PP2_TYPE_AUTHORITY is the client's SNI, i.e. the client's bytes: 2 KB of escape
    sequences must not make a line past PIPE_BUF (interleaved with other processes'
    lines) nor reach the terminal raw."""
    server = serve("--proxy-protocol", "v2", "--log-format", log_format)
    authority = b"\x1b]0;owned\x07\x1b[2J" * 100 + b"\n" * 100
    header = encode_v2(("203.0.113.7", 4242), ("10.0.0.1", 80), ((0x02, authority),))
    with connect(server.port) as sock:
        sock.sendall(header + b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ping"
    server.wait_event("end")
    (line,) = [text for text in server.lines if "proxy" in text and "203.0.113.7" in text]
    assert len(line.encode()) < 1024
    assert line.isprintable()
    (event,) = server.events("proxy")
    assert event["authority"].startswith("\x1b]0;owned\x07")
    assert event["authority"].endswith(" chars)")


@pytest.mark.parametrize(
    ("wire", "detail"),
    [
        (b"GET / HTTP/1.0\r\n\r\n", "signature"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n", "v1-line"),
        (b"PROXY UNKNOWN " + b"x" * 120, "v1-too-long"),
    ],
)
def test_malformed_header_is_rejected_and_logged(
    serve: ServerFactory, wire: bytes, detail: str
) -> None:
    server = serve("--proxy-protocol", "any")
    with connect(server.port) as sock:
        sock.sendall(wire)
        assert cut(sock)
    (line,) = server.wait_event("reject", reason="proxy")
    assert line["detail"].startswith(detail)


def test_untrusted_source_is_refused(start_server: ServerFactory) -> None:
    server = start_server(
        "--proxy-protocol", "v1", "--proxy-from", "127.0.0.2", "--proxy-from", "10.0.0.0/8"
    )
    with connect(server.port) as sock:  # from 127.0.0.1
        sock.sendall(encode_v1(("1.1.1.1", 1), ("2.2.2.2", 2)) + b"x")
        assert cut(sock)
    (line,) = server.wait_event("reject", reason="proxy")
    assert "untrusted" in line["detail"]
    with socket.create_connection((server_host(), server.port), WAIT, ("127.0.0.2", 0)) as sock:
        sock.settimeout(WAIT)
        sock.sendall(encode_v1(("1.1.1.1", 1), ("2.2.2.2", 2)) + b"ok")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ok"


def server_host() -> str:
    return "127.0.0.1"


def test_banner_waits_for_the_header(start_server: ServerFactory) -> None:
    server = start_server("--proxy-protocol", "v2", "--banner", "hi\\n")
    with connect(server.port) as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)  # nothing before the header: AWS NLB sends it late
        sock.settimeout(WAIT)
        sock.sendall(encode_v2(("192.0.2.9", 9), ("192.0.2.1", 1)))
        assert recv_exactly(sock, 3) == b"hi\n"


def test_missing_header_is_cut_at_the_deadline(serve: ServerFactory) -> None:
    server = serve("--proxy-protocol", "v1", "--handshake-timeout", "0.3")
    with connect(server.port) as silent, connect(server.port) as slow:
        slow.sendall(b"PROXY TCP4 ")
        assert cut(silent)
        assert cut(slow)
    server.wait_event("timeout", count=2, kind="handshake")
    assert server.events("reject") == []


def test_client_and_bench_send_a_header(start_server: ServerFactory) -> None:
    server = start_server("--proxy-protocol", "any", "--", *ENV_PROGRAM)
    for version in ("v1", "v2"):
        result = run_cli(["client", "127.0.0.1", str(server.port), "--proxy", version])
        assert result.returncode == 0, result.stderr
        env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
        assert env["TCPREMOTEIP"] == "127.0.0.1"
    echo = start_server("--proxy-protocol", "any")
    for version in ("v1", "v2"):
        result = run_cli(
            ["bench", "127.0.0.1", str(echo.port), "--proxy", version, "-m", "rate", "-d", "0.5"],
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    echo.wait_event("proxy", count=10)
    assert echo.events("reject") == []


@pytest.mark.parametrize(
    "args",
    [
        ["--proxy-protocol", "v3"],
        ["--proxy-from", "10.0.0.0/8"],
        ["--proxy-protocol", "v1", "--proxy-from", "10.0.0.0/40"],
        ["--proxy-protocol", "v1", "--proxy-from", "example.com"],
        ["--handshake-timeout", "-1"],
    ],
)
def test_bad_options_exit_100(args: list[str]) -> None:
    result = run_cli(["serve", "127.0.0.1:0", *args])
    assert result.returncode == 100
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
