"""A forker started after start-up (parent.forker, parent.forkerlink): its start
timeout comes from the loop's clock, never from a wait.

The "forker" here is a real process that never says READY (``sleep``), so the
start can only end by the deadline; the loop around it is a stand-in with a fake
clock that records what the engine asks of it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from forkserve.forker import wire
from forkserve.parent import forker as forker_module
from forkserve.parent.forker import Forkers
from forkserve.parent.forkerlink import Launch
from forkserve.parent.forkerstart import START_TIMEOUT, StartFailed


class Recorder:
    """What the engine logs, pauses and counts, by name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **fields: self.calls.append((name, {"args": args, **fields}))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [fields for called, fields in self.calls if called == name]


class Children:
    def __init__(self) -> None:
        self.adopted: dict[int, object] = {}

    def adopt(self, pid: int, owner: object) -> None:
        self.adopted[pid] = owner


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self.log = Recorder()
        self.metrics = Recorder()
        self.children = Children()
        self.watched: set[int] = set()
        self.stopping: str | None = None
        self.timed: list[object] = []

    def add_timer(self, timed: object) -> None:
        self.timed.append(timed)

    def drop_timer(self, timed: object) -> None:
        self.timed.remove(timed)

    def clock(self) -> float:
        return self.now

    def watch(self, fileobj: socket.socket, callback: object, room: int = 0) -> None:
        self.watched.add(fileobj.fileno())

    def unwatch(self, fileobj: socket.socket) -> None:
        self.watched.discard(fileobj.fileno())


class FakeAcceptor(Recorder):
    paused_until = 0.0


class FakeConns:
    def __init__(self) -> None:
        self.acceptor = FakeAcceptor()


@pytest.fixture
def silent_forkers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Forkers, FakeLoop]]:
    """A Forkers whose forkers are processes that never answer."""
    started: list[subprocess.Popen[bytes]] = []

    def launch(recipe: bytes) -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(["sleep", "60"], pass_fds=[theirs.fileno()])
        theirs.close()
        ours.setblocking(False)
        started.append(proc)
        return proc.pid, ours

    monkeypatch.setattr(forker_module, "launch", launch)
    monkeypatch.setattr(forker_module, "become_subreaper", lambda: None)
    loop = FakeLoop()
    forkers = Forkers(loop, FakeConns(), b"recipe", needed=True)  # type: ignore[arg-type]
    yield forkers, loop
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_reload_whose_forker_never_answers_is_refused_at_its_deadline(
    silent_forkers: tuple[Forkers, FakeLoop],
) -> None:
    forkers, loop = silent_forkers
    ended: list[BaseException | None] = []
    forkers.reload(b"new", frozenset({"banner"}), False, lambda: ended.append)
    link = forkers.next
    assert link is not None and not link.ready
    assert forkers.deadline() == loop.now + START_TIMEOUT
    assert loop.timed == [forkers]  # a timer of the loop's only while a forker starts
    forkers.on_deadline(loop.now + START_TIMEOUT - 0.001)
    assert ended == []  # not yet
    forkers.on_deadline(loop.now + START_TIMEOUT)
    (error,) = ended
    assert isinstance(error, StartFailed)
    assert str(error) == f"the forker was not ready within {START_TIMEOUT:g}s"
    assert forkers.next is None and forkers.deadline() is None
    assert loop.timed == []
    assert link.channel is None
    _, status = os.waitpid(link.pid, 0)  # SIGKILLed at once: nothing of it is needed
    assert os.WTERMSIG(status) == signal.SIGKILL


def test_a_respawn_that_never_answers_keeps_what_waits_for_the_next(
    silent_forkers: tuple[Forkers, FakeLoop],
) -> None:
    """The current forker starting after one died: connections wait in its outbox;
    at its deadline it fails, accepting pauses, and they wait for the next one."""
    forkers, loop = silent_forkers
    forkers.respawn()
    link = forkers.current
    assert link is not None and forkers.blocked()
    waiting, client = socket.socketpair()
    try:
        item: tuple[object, ...] = (wire.CONN, 7, "peer", 1, {}, None, 1)
        link.launches[7] = Launch(link, "peer", None, 0.0, None)
        link.send(item, [waiting])
        assert link.flush()  # nothing is sent before READY, and that is no full channel
        assert link.outbox == [(item, [waiting])]
        forkers.on_deadline(loop.now + START_TIMEOUT)
        assert forkers.current is None and forkers.dead is link
        assert loop.log.named("warning")[-1]["args"] == ("forker-failed",)
        assert forkers.conns.acceptor.named("pause")[-1]["args"] == ("forker",)  # type: ignore[attr-defined]
        assert forkers.in_flight() == 1  # still counted: never dropped
        assert forkers.drop_waiting() == 1  # unless a stop's grace runs out
        assert waiting.fileno() == -1
        assert forkers.in_flight() == 0
    finally:
        waiting.close()
        client.close()
