"""The log never blocks the parent, drops whole lines only, and says how many."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator

import pytest

from forkserve._log import CHILD_WAIT, Log
from tests.support import parse_line

F_SETPIPE_SZ = 1031
# Longer than the one-page pipe: a handler's traceback, raw (values in event lines are
# capped well below PIPE_BUF, see core.logline.VALUE_LIMIT).
LONG = "2026-11-25T00:00:00.000Z long text=" + "y" * 6000 + "\n"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A one-page pipe: ``(read end, write end)``."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    yield r, w
    os.close(r)
    os.close(w)


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data
        data += chunk


def fill(log: Log) -> int:
    """Log until lines are dropped; return how many were written."""
    for written in range(1000):
        started = time.monotonic()
        log.info("accept", peer="127.0.0.1:5000", pid=1234, conns="1/1000")
        assert time.monotonic() - started < 0.5, "the parent waited for its log"
        if log.dropped:
            return written
    raise AssertionError("the log never filled")


def test_the_parent_drops_whole_lines_and_says_how_many(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = Log(fd=w)
    assert log.fd != w, "a descriptor of the log's own"
    assert os.get_blocking(w), "the shared descriptor stays blocking"
    written = fill(log)
    for _ in range(9):
        log.info("end", pid=1234)
    assert log.dropped == 10
    assert len(read_all(r).splitlines()) == written
    log.info("stop", signal="SIGTERM")
    lines = read_all(r).decode().splitlines()
    assert [parse_line(line)[0] for line in lines] == ["log-dropped", "stop"]  # type: ignore[index]
    assert parse_line(lines[0])[1]["n"] == "10"  # type: ignore[index]
    assert log.dropped == 0


def test_a_line_partly_written_is_finished_before_any_other(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = Log(fd=w)
    log.info("first", text="x" * 1000)
    log.raw(LONG)  # longer than the pipe: written in part
    assert log.rest
    log.info("dropped")
    assert log.dropped == 1
    data = b""
    for _ in range(10):  # the loop calls catch_up each time the log has room
        data += read_all(r)
        if log.catch_up():
            break
    log.info("after")
    data += read_all(r)
    lines = data.decode().splitlines()
    events = [parse_line(line) for line in lines]
    assert all(events), f"a half line: {lines}"
    assert [e[0] for e in events if e] == ["first", "long", "log-dropped", "after"]
    assert events[2][1]["n"] == "1"  # type: ignore[index]
    assert len(lines[1]) > 6000


def test_a_child_waits_for_room_a_bounded_time(pipe: tuple[int, int]) -> None:
    _, w = pipe
    log = Log(fd=w)
    fill(log)
    before = log.dropped
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            for _ in range(5):
                log.info("end", pid=os.getpid())
        finally:
            os._exit(0 if log.dropped == before + 5 else 1)
    _, status = os.waitpid(pid, 0)
    took = time.monotonic() - started
    assert os.waitstatus_to_exitcode(status) == 0
    assert CHILD_WAIT * 0.9 < took < CHILD_WAIT + 5


def test_a_closed_log_is_no_error() -> None:
    r, w = os.pipe()
    log = Log(fd=w)
    os.close(r)
    log.info("accept", pid=1)  # EPIPE: nobody will read it
    assert log.dropped == 0
    os.close(w)


def test_a_socket_log_is_written_with_msg_dontwait() -> None:
    """systemd's journal stream is a socket: the log sends with MSG_DONTWAIT, a flag
    of the call, and leaves the socket itself blocking for everyone else."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        log = Log(fd=theirs.fileno())
        assert log.sock is not None
        try:
            fill(log)
            assert theirs.getblocking()
            assert parse_line(ours.recv(200).decode().partition("\n")[0])
        finally:
            log.sock.close()


def test_a_child_never_writes_the_parents_backlog(pipe: tuple[int, int]) -> None:
    """The end of a line the parent wrote in part is the parent's to finish: a child
    forked meanwhile writing it too would garble the log."""
    r, w = pipe
    log = Log(fd=w)
    log.raw(LONG)  # longer than the pipe: written in part
    log.info("dropped")
    assert log.rest and log.dropped
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            log.in_child()
            os.set_blocking(r, False)
            os.read(r, 8192)  # room for the child's own line
            log.info("child")
        finally:
            os._exit(0 if not log.rest and not log.dropped else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert log.rest, "the parent still has its own to write"
