"""A handler that returns before reading all its client sent: nothing of its reply is lost.

Closing a TCP socket with unread input makes the kernel answer with a reset, and a
reset throws away whatever of the reply the client had not read yet. The child
drains the input first (a lingering close, as nginx and Apache do); these tests
saw the client cut off (ECONNRESET after ~128 KB of 4 MB) before it did.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from forkserve.child.linger import LINGER_IDLE
from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all

REPLY_SIZE = 4_000_000

HANDLERS = '''
def reply_early(conn, peer):
    """Read one line, send a large reply, return: the rest of the input is unread."""
    conn.makefile("rb").readline()
    conn.sendall(b"y" * 4_000_000)


'''


@pytest.fixture
def handlers(tmp_path: Path) -> Path:
    path = tmp_path / "early.py"
    path.write_text(HANDLERS)
    return path


def test_unread_input_does_not_cut_the_reply(serve: ServerFactory, handlers: Path) -> None:
    server = serve("--handler", f"{handlers}:reply_early")
    for _ in range(3):
        with connect(server.port) as sock:
            sock.sendall(b"hello\n" + b"z" * 200_000)  # more than the handler reads
            assert len(recv_all(sock)) == REPLY_SIZE  # a reset raises instead
    ends = server.wait_event("end", count=3)
    assert [end["exit"] for end in ends] == ["0", "0", "0"]


def test_client_that_never_closes_is_let_go(start_server: ServerFactory, handlers: Path) -> None:
    """The wait for the client's end is bounded: once the reply is acknowledged and
    the client stays silent for LINGER_IDLE, the child closes and ends."""
    server = start_server("--handler", f"{handlers}:reply_early")
    with connect(server.port) as sock:
        sock.sendall(b"hello\n" + b"z" * 200_000)
        got = 0
        while chunk := sock.recv(1 << 20):  # the reply, then the server's FIN
            got += len(chunk)
        assert got == REPLY_SIZE
        # The socket stays open, our end never sent: the child gives up waiting.
        (end,) = server.wait_event("end", timeout=LINGER_IDLE + WAIT)
        assert end["exit"] == "0"
        assert float(end["duration"].rstrip("s")) >= LINGER_IDLE - 1


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_upload_answered_early_gets_the_whole_reply(
    start_server: ServerFactory, handlers: Path, tmp_path: Path
) -> None:
    """socat sends a file and prints the reply: the reply is whole although the
    handler never read the upload (socat saw "Connection reset by peer" before)."""
    upload = tmp_path / "upload"
    upload.write_bytes(b"hello\n" + b"u" * 8_000_000)
    server = start_server("--handler", f"{handlers}:reply_early")
    with upload.open("rb") as stdin:
        result = subprocess.run(
            ["socat", "-t", "5", "-", f"TCP:127.0.0.1:{server.port}"],
            stdin=stdin,
            capture_output=True,
            timeout=WAIT,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"y" * REPLY_SIZE
    assert server.wait_event("end")[0]["exit"] == "0"


def test_socket_the_handler_closed_itself(start_server: ServerFactory, tmp_path: Path) -> None:
    """A handler that closed the socket itself: nothing left to drain, no error."""
    path = tmp_path / "closes.py"
    path.write_text("def closes(conn, peer):\n    conn.sendall(b'bye')\n    conn.close()\n")
    server = start_server("--handler", f"{path}:closes")
    with connect(server.port) as sock:
        assert recv_all(sock) == b"bye"
    assert server.wait_event("end")[0]["exit"] == "0"
