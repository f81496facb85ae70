"""--max-lifetime is kept per connection, not per pid (issue 12, finding 5)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from forkserve._log import Log
from forkserve.core.gate import Gate, Policy, Timers
from forkserve.parent.admission import Admission
from forkserve.parent.children import ChildTable, Exited
from forkserve.parent.operations import NoMetrics


class Children(ChildTable):
    """A child table whose signals are recorded, not sent (the pids are made up)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[int, int]] = []

    def signal(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))

    def end(self, pid: int) -> list[Exited]:
        """As reap() returns it: ``pid`` exited 0."""
        return [Exited(pid, self._remove(pid), 0, None, False)]


class Loop:
    """What Admission reads of the parent's loop, on a fake clock."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.children = Children()
        self.metrics = NoMetrics()
        self.sel = None


class Lifetimes:
    """The lifetime half of the parent's admission, driven by hand."""

    def __init__(self, log: Log, max_lifetime: float) -> None:
        self.loop = Loop(log)
        self.children = self.loop.children
        self.admission = Admission(self.loop, Policy(Gate(), b"", max_lifetime))  # type: ignore[arg-type]

    def fork(self, pid: int, now: float) -> None:
        child = self.children.add(pid, f"peer-{pid}")
        child.started = now  # the fake clock's
        self.admission.start_lifetime(child)

    def reap(self, pid: int) -> None:
        for ended in self.children.end(pid):
            self.admission.forget(ended)

    def on_deadline(self, now: float) -> None:
        self.admission.on_deadline(now)

    def deadline(self) -> float | None:
        return self.admission.deadline()


@pytest.fixture
def loop() -> Iterator[Lifetimes]:
    fd = os.open(os.devnull, os.O_WRONLY)
    yield Lifetimes(Log(fd=fd), 10.0)
    os.close(fd)


def test_a_reused_pid_does_not_inherit_the_old_deadline(loop: Lifetimes) -> None:
    loop.fork(100, 0.0)  # connection A
    loop.reap(100)  # ends at once
    loop.fork(100, 5.0)  # connection B: the kernel gave it A's pid
    assert loop.deadline() == 15.0
    loop.on_deadline(10.0)  # A's deadline
    assert loop.children.sent == [], "B was ended at 5 s of age"
    loop.on_deadline(15.0)
    assert loop.children.sent == [(100, signal.SIGTERM)]
    loop.on_deadline(16.0)
    assert loop.children.sent == [(100, signal.SIGTERM), (100, signal.SIGKILL)]


def test_a_reused_pid_is_not_killed_by_the_old_connections_sigkill(loop: Lifetimes) -> None:
    loop.fork(100, 0.0)
    loop.on_deadline(10.0)  # SIGTERM, SIGKILL due at 11
    loop.reap(100)  # it obeyed
    loop.fork(100, 10.5)  # and its pid went to a new connection
    loop.on_deadline(11.0)
    assert loop.children.sent == [(100, signal.SIGTERM)]


def test_finished_connections_leave_no_timer_behind(loop: Lifetimes) -> None:
    for pid in range(1000):
        loop.fork(1000 + pid, pid / 100)
        loop.reap(1000 + pid)
    assert loop.admission.lifetimes is not None
    assert len(loop.admission.lifetimes) == 0
    assert loop.deadline() is None


def test_timers_discard_and_keep_start_order() -> None:
    timers = Timers(5.0)
    for key, start in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
        timers.add(key, start)
    timers.discard("a")
    timers.discard("missing")
    assert timers.next_deadline() == 6.0
    assert timers.due(6.5) == ["b"]
    assert timers.due(7.0) == ["c"]
    assert len(timers) == 0
