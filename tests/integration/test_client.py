"""``forkserve client``: the seed's client defects, proven absent, and its exit codes."""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, raw_listener, run_cli


def client(port: int, data: bytes, *extra: str, host: str = "127.0.0.1") -> tuple[int, bytes, str]:
    result = run_cli(["client", host, str(port), *extra], input=data)
    return result.returncode, result.stdout, result.stderr.decode()


def test_prints_each_line_and_exits_at_end_of_input(start_server: ServerFactory) -> None:
    """The seed's client wrote before its buffer at EOF and looped forever."""
    server = start_server()
    assert client(server.port, b"a\nb\n") == (0, b"a\nb\n", "")


def test_empty_lines_and_empty_input(start_server: ServerFactory) -> None:
    """The seed's client sent zero bytes for an empty line and then blocked forever."""
    server = start_server()
    assert client(server.port, b"\n\nx\n\n") == (0, b"\n\nx\n\n", "")
    assert client(server.port, b"") == (0, b"", "")


def test_long_lines_stay_in_step(start_server: ServerFactory) -> None:
    """The seed read one 128-byte reply per line; long lines drifted out of step."""
    server = start_server()
    lines = b"".join(b"%d:" % i + b"y" * random.randrange(100, 5000) + b"\n" for i in range(200))
    code, out, _ = client(server.port, lines)
    assert code == 0
    assert out == lines


def test_binary_and_large_input(start_server: ServerFactory) -> None:
    """Reads and writes at once: 16 MiB through an echo server does not deadlock."""
    server = start_server()
    payload = random.randbytes(16 * 1024 * 1024) + bytes(range(256))
    code, out, _ = client(server.port, payload)
    assert code == 0
    assert out == payload


def test_ipv6_and_host_names(start_server: ServerFactory) -> None:
    server = start_server(address="[::]:0")
    assert client(server.port, b"v6\n", host="::1") == (0, b"v6\n", "")
    assert client(server.port, b"v6\n", host="[::1]") == (0, b"v6\n", "")
    assert client(server.port, b"name\n", host="localhost") == (0, b"name\n", "")


def test_refused_exits_111_with_one_line() -> None:
    with raw_listener() as sock:
        port = sock.getsockname()[1]
    code, out, err = client(port, b"x")
    assert code == 111
    assert out == b""
    assert err.count("\n") == 1
    assert "Connection refused" in err


def test_reset_exits_111() -> None:
    with raw_listener() as listener:
        port = listener.getsockname()[1]

        def reset_first_client() -> None:
            conn, _ = listener.accept()
            conn.recv(10)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

        peer = threading.Thread(target=reset_first_client)
        peer.start()
        code, _, err = client(port, b"hello")
        peer.join(WAIT)
    assert code == 111
    assert err.strip() == "forkserve client: connection reset by the server"


def test_silent_server_times_out_after_input_ends() -> None:
    with raw_listener() as listener:
        port = listener.getsockname()[1]
        code, _, err = client(port, b"anyone?", "--timeout", "0.3")
    assert code == 111
    assert "timed out" in err


@pytest.mark.parametrize(
    "args",
    [
        ["client"],
        ["client", "127.0.0.1"],
        ["client", "127.0.0.1", "http"],
        ["client", "127.0.0.1", "70000"],
        ["client", "bad host", "80"],
        ["client", "no-such-host.invalid", "80"],
        ["client", "127.0.0.1", "80", "--timeout", "soon"],
    ],
)
def test_bad_arguments_exit_100(args: list[str]) -> None:
    result = run_cli(args)
    assert result.returncode == 100, result.stderr
    assert result.stderr.decode().strip().count("\n") == 0
    assert b"Traceback" not in result.stderr
