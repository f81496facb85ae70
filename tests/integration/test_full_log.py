"""A log nobody reads (issue 12, findings 2 and 3).

The server's stderr is a pipe the test does not read (shrunk to one page, 4 KiB, so
that it fills after a few dozen lines): the parent must go on accepting, reaping,
answering and stopping, signals must not be lost while it is busy, and once the
reader drains the pipe the log says how many lines it dropped.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.soak.scenarios import CHAOS
from tests.support import (
    UNREAD_PIPE_SIZE,
    WAIT,
    ServerProcess,
    children_of,
    parse_line,
    wait_until,
)


def full(server: ServerProcess) -> bool:
    """The server is blocked writing a line, or waits for events with no room left
    for one in its log: it has written all it could."""
    wchan = Path(f"/proc/{server.pid}/wchan").read_text()
    idle = "epoll_wait" in wchan and server.log_queued() > UNREAD_PIPE_SIZE - 200
    return "pipe_write" in wchan or idle


def pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits to be delivered to ``pid`` (ShdPnd in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("ShdPnd:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def deliver(pid: int, sig: int) -> None:
    """Send ``sig`` and wait until the kernel has delivered it (its handler ran), so
    that each one counts: standard signals sent faster than that merge."""
    os.kill(pid, sig)
    deadline = time.monotonic() + WAIT
    while pending(pid, sig):
        assert time.monotonic() < deadline, f"signal {sig} never delivered"
        time.sleep(0.0005)


def echo_once(port: int, command: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.settimeout(WAIT)
        sock.sendall(command + b"ping\n")
        return sock.recv(16)


def test_sigterm_is_not_lost_after_a_burst_of_signals(start_server: ServerFactory) -> None:
    """Finding 2: with the log stalled, 400 SIGCHLD then SIGTERM: the server stops.

    On the old code the parent blocked writing its log while every signal's byte
    piled up in the wakeup socket (278 fit); SIGTERM's was dropped, and once the
    log drained the parent never learnt it had been asked to stop.
    """
    server = start_server(unread_log=True)
    for _ in range(150):  # each SIGHUP logs a 45-byte reload line: 6.6 KiB in all
        deliver(server.pid, signal.SIGHUP)
    wait_until(lambda: full(server), what="the log pipe to fill")
    for _ in range(400):
        deliver(server.pid, signal.SIGCHLD)
    deliver(server.pid, signal.SIGTERM)
    server.drain_log()
    assert server.wait_exit() == 0
    assert server.events("stopped")


def test_a_log_nobody_reads_never_stops_the_server(serve: ServerFactory) -> None:
    """Finding 3: with its log full, the server still accepts, reaps and answers;
    once the reader drains the pipe it says how many lines it dropped, whole."""
    server = serve(unread_log=True)
    for number in range(300):  # about 2 lines each: 10 times the pipe's size
        assert echo_once(server.port) == b"ping\n", f"connection {number}"
    assert server.log_queued() > UNREAD_PIPE_SIZE - 200, "the log is full"
    wait_until(lambda: not server.zombies() and len(children_of(server.pid)) <= 8, what="reaping")
    server.drain_log()

    def dropped() -> int:  # a line that fits a gap may get through: counts are per gap
        return sum(int(fields["n"]) for fields in server.events("log-dropped"))

    wait_until(lambda: dropped() > 100, what="log-dropped lines for the lines lost")
    assert echo_once(server.port) == b"ping\n"
    assert server.stop() == 0
    lines = server.log_text().splitlines()[:-1]  # without the reader's <eof>
    assert all(parse_line(line) for line in lines), "a half line in the log"
    assert server.events("stopped")


def test_a_child_never_hangs_on_a_full_log(serve: ServerFactory) -> None:
    """Finding 3: a connection's process that logs (here the first-byte deadline's
    ``timeout`` line) into a full log waits a bounded time, then drops the line."""
    server = serve("--handshake-timeout", "0.2", unread_log=True)
    for number in range(100):
        assert echo_once(server.port) == b"ping\n", f"connection {number}"
    assert server.log_queued() > UNREAD_PIPE_SIZE - 200, "the log is full"
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) for _ in range(4)]
    for sock in silent:
        with sock:
            sock.settimeout(WAIT)
            assert sock.recv(16) == b"", "the deadline ends the connection"
    assert echo_once(server.port) == b"ping\n"
    wait_until(lambda: not server.zombies(), what="every exit reaped")


def test_a_traceback_never_hangs_a_child_on_a_full_log(serve: ServerFactory) -> None:
    """A handler's traceback (text format: raw lines) into a full log: the child
    waits a bounded time, then drops it, and ends."""
    server = serve("--handler", CHAOS, unread_log=True)
    for number in range(100):
        assert echo_once(server.port, b"E") == b"ping\n", f"connection {number}"
    assert server.log_queued() > UNREAD_PIPE_SIZE - 200, "the log is full"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            sock.sendall(b"R")
            assert sock.recv(16) == b"", "the handler raised: the connection ends"
    assert echo_once(server.port, b"E") == b"ping\n"
    wait_until(lambda: not server.zombies(), what="every exit reaped")


def fill_stdout() -> None:
    """preexec: fill standard output (a pipe) to the brim before the server starts."""
    os.set_blocking(1, False)
    try:
        while True:
            os.write(1, b"x" * 4096)
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(1, True)


def test_print_port_never_blocks_on_a_full_stdout(start_server: ServerFactory) -> None:
    """--print-port writes its line as the log does: a stdout nobody reads costs the
    line (logged as print-port-failed), never the service."""
    server = start_server(preexec_fn=fill_stdout, print_port=False)
    failed = server.wait_event("print-port-failed")[0]
    assert failed["error"] == "EAGAIN"
    port = int(server.wait_event("listen")[0]["address"].rpartition(":")[2])
    assert echo_once(port) == b"ping\n"
