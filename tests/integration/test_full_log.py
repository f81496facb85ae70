"""A log nobody reads (issue 12, findings 2 and 3).

The server's stderr is a pipe the test does not read (shrunk to one page, 4 KiB, so
that it fills after a few dozen lines): the parent must go on accepting, reaping,
answering and stopping, signals must not be lost while it is busy, and once the
reader drains the pipe the log says how many lines it dropped.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import select
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FORKSERVE, WAIT, children_of, parse_line, wait_until

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ on Linux only
PIPE_SIZE = 4096


class UnreadLog:
    """``forkserve serve`` whose stderr is a one-page pipe nobody reads until ``drain()``.

    Resource handling: ``close()`` kills the process group if it still runs and
    closes the pipes.
    """

    def __init__(self, *args: str) -> None:
        self.pipe_r, pipe_w = os.pipe()
        fcntl.fcntl(pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
        self.proc = subprocess.Popen(
            [*FORKSERVE, "serve", "127.0.0.1:0", "--print-port", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=pipe_w,
            process_group=0,
        )
        os.close(pipe_w)
        self.pid = self.proc.pid
        self.data = b""
        self.reader: threading.Thread | None = None
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        assert ready, "no port printed"
        self.port = int(self.proc.stdout.readline())

    def queued(self) -> int:
        """Bytes in the pipe, unread."""
        count = array.array("i", [0])
        fcntl.ioctl(self.pipe_r, termios.FIONREAD, count)
        return count[0]

    def full(self) -> bool:
        """The server is blocked writing a line, or waits for events with no room
        left for one: it has written all it could."""
        wchan = Path(f"/proc/{self.pid}/wchan").read_text()
        idle = "epoll_wait" in wchan and self.queued() > PIPE_SIZE - 200
        return "pipe_write" in wchan or idle

    def drain(self) -> None:
        """Start reading the pipe, as a log reader that comes back would."""

        def read() -> None:
            while chunk := os.read(self.pipe_r, 65536):
                self.data += chunk

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def events(self, name: str) -> list[dict[str, str]]:
        lines = self.data.decode("utf-8", "replace").splitlines()
        parsed = [parse_line(line) for line in lines]
        return [fields for event in parsed if event and event[0] == name for fields in [event[1]]]

    def zombies(self) -> list[int]:
        return [pid for pid, state in children_of(self.pid) if state == "Z"]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(WAIT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # anything the server left behind
        if self.reader is None:
            self.drain()
        assert self.reader is not None
        self.reader.join(WAIT)
        os.close(self.pipe_r)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def unread() -> Iterator[type[UnreadLog]]:
    started: list[UnreadLog] = []

    class Started(UnreadLog):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Started
    for server in started:
        server.close()


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


def test_sigterm_is_not_lost_after_a_burst_of_signals(unread: type[UnreadLog]) -> None:
    """Finding 2: with the log stalled, 400 SIGCHLD then SIGTERM: the server stops.

    On the old code the parent blocked writing its log while every signal's byte
    piled up in the wakeup socket (278 fit); SIGTERM's was dropped, and once the
    log drained the parent never learnt it had been asked to stop.
    """
    server = unread()
    for _ in range(150):  # each SIGHUP logs a 45-byte reload line: 6.6 KiB in all
        deliver(server.pid, signal.SIGHUP)
    wait_until(server.full, what="the log pipe to fill")
    for _ in range(400):
        deliver(server.pid, signal.SIGCHLD)
    deliver(server.pid, signal.SIGTERM)
    server.drain()
    assert server.proc.wait(WAIT) == 0
    assert server.reader is not None
    server.reader.join(WAIT)
    assert server.events("stopped")
