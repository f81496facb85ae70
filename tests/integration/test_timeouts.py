"""Time limits: idle timeout, max lifetime, first-byte (handshake) deadline.

Each is measured from the client's side with monotonic deadlines: the connection must
end no sooner than the limit and within a bounded margin after it. The trickling
clients pace themselves with short sleeps: that pacing is what is under test (a
slow-loris client), not a way to wait for the server.
"""

from __future__ import annotations

import socket
import time

from tests.integration.conftest import ServerFactory
from tests.support import connect, recv_all

# How late a limit may act on a loaded test machine.
MARGIN = 3.0


def time_until_closed(sock: socket.socket) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (EOF or reset), and what it sent."""
    started = time.monotonic()
    try:
        data = recv_all(sock)
    except ConnectionResetError:
        data = b"<reset>"
    return time.monotonic() - started, data


def trickle(sock: socket.socket, every: float, for_at_most: float) -> tuple[float, int]:
    """Send one byte every ``every`` seconds, reading the echo, until the server
    closes; return how long that took and how many bytes came back."""
    started = time.monotonic()
    echoed = 0
    while time.monotonic() - started < for_at_most:
        try:
            sock.sendall(b"x")
            got = sock.recv(10)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not got:
            break
        echoed += len(got)
        time.sleep(every)
    return time.monotonic() - started, echoed


def test_idle_timeout_ends_a_silent_connection(serve: ServerFactory) -> None:
    server = serve("--idle-timeout", "0.5")
    with connect(server.port) as sock:
        sock.sendall(b"hi")
        assert sock.recv(10) == b"hi"
        elapsed, _ = time_until_closed(sock)
    assert 0.45 <= elapsed < 0.5 + MARGIN
    (end,) = server.wait_event("end")
    assert end["exit"] == "124"
    (timeout,) = server.wait_event("timeout")
    assert (timeout["kind"], timeout["after"], timeout["peer"]) == ("idle", "0.5s", end["peer"])


def test_traffic_keeps_an_idle_timeout_away(start_server: ServerFactory) -> None:
    server = start_server("--idle-timeout", "0.5")
    with connect(server.port) as sock:
        elapsed, echoed = trickle(sock, every=0.1, for_at_most=1.2)
    assert echoed >= 5 and elapsed >= 1.2  # served throughout, past the idle limit


def test_slow_loris_is_cut_at_max_lifetime(serve: ServerFactory, mode: str) -> None:
    """A byte every 0.1 s never trips a 0.5 s idle timeout; the lifetime cuts it."""
    server = serve("--idle-timeout", "0.5", "--max-lifetime", "1")
    with connect(server.port) as sock:
        elapsed, echoed = trickle(sock, every=0.1, for_at_most=1 + MARGIN + 2)
    assert 1.0 <= elapsed < 1 + MARGIN
    assert echoed >= 3
    (end,) = server.wait_event("end")
    assert end["signal"] == "SIGTERM(15)"
    (limit,) = server.wait_event("max-lifetime")
    # A prefork worker is sent SIGQUIT, on which it dies by SIGTERM (see prefork.worker).
    signal_sent = "SIGQUIT" if mode == "prefork" else "SIGTERM"
    assert (limit["peer"], limit["after"], limit["signal"]) == (end["peer"], "1s", signal_sent)


def test_max_lifetime_kills_a_program_that_ignores_sigterm(start_server: ServerFactory) -> None:
    server = start_server("--max-lifetime", "0.5", "--", "sh", "-c", "trap '' TERM; cat")
    with connect(server.port) as sock:
        sock.sendall(b"hello\n")
        elapsed, data = time_until_closed(sock)
    assert data == b"hello\n"
    assert 0.5 + 1.0 <= elapsed < 0.5 + 1.0 + MARGIN  # SIGTERM ignored, SIGKILL 1 s later
    (end,) = server.wait_event("end")
    assert end["signal"] == "SIGKILL(9)"
    (kill,) = server.wait_event("kill", reason="max-lifetime")
    assert kill["pid"] == end["pid"]


def test_handshake_timeout_closes_a_client_that_never_speaks(serve: ServerFactory) -> None:
    server = serve("--handshake-timeout", "0.5", "--banner", "hello\\n")
    with connect(server.port) as sock:
        elapsed, data = time_until_closed(sock)
    assert data == b"hello\n"  # the banner goes first; then the wait for a first byte
    assert 0.45 <= elapsed < 0.5 + MARGIN
    (end,) = server.wait_event("end")
    assert end["exit"] == "125"
    (timeout,) = server.wait_event("timeout")
    assert (timeout["kind"], timeout["after"]) == ("handshake", "0.5s")
    with connect(server.port) as sock:
        sock.sendall(b"prompt\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"hello\nprompt\n"


def test_handshake_timeout_before_a_program(start_server: ServerFactory) -> None:
    server = start_server("--handshake-timeout", "0.3", "--", "cat")
    with connect(server.port) as sock:
        elapsed, _ = time_until_closed(sock)
    assert 0.25 <= elapsed < 0.3 + MARGIN
    assert server.wait_event("end")[0]["exit"] == "125"
    with connect(server.port) as sock:
        sock.sendall(b"in time\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"in time\n"


def test_chargen_honours_the_idle_timeout(start_server: ServerFactory) -> None:
    """chargen waits in poll(2), not in a socket call: it must time out all the same
    when the client stops reading (its send buffer full) and sends nothing."""
    server = start_server("--handler", "chargen", "--idle-timeout", "0.5")
    with connect(server.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert sock.recv(10)
        (end,) = server.wait_event("end", timeout=0.5 + MARGIN + 5)
    assert end["exit"] == "124"
