"""The parent loop's policy without processes, on a fake clock: which action each
signal maps to, and the stop phases (drain, then SIGTERM, then SIGKILL)."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator

import pytest

from forkserve._log import DEBUG, Log
from forkserve.parent.children import Child, ChildTable, Exited
from forkserve.parent.loop import KILL_AFTER, Loop
from forkserve.parent.signals import SERVER_SIGNALS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Children(ChildTable):
    """``live`` children that exist only here; signals are recorded, not sent."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.sent: list[int] = []
        self.reaped: list[Exited] = []

    def __len__(self) -> int:
        return self.live

    def signal_all(self, sig: int) -> None:
        self.sent.append(sig)

    def reap(self) -> list[Exited]:
        reaped, self.reaped = self.reaped, []
        return reaped


class Model:
    """A process model that records what the loop asks of it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.listener = object()
        self.pending = 0

    def __getattr__(self, name: str) -> object:
        def record(*args: object, **kwargs: object) -> object:
            self.calls.append(name if not kwargs else f"{name}{sorted(kwargs.items())}")
            return {"resize": False, "stop": self.pending}.get(name)

        return record

    def busy(self) -> int:
        return 0

    def capacity(self) -> int:
        return 1

    def queued(self) -> int:
        return self.pending

    def deadline(self) -> None:
        return None


class Fixture:
    def __init__(self, log_path: str) -> None:
        self.fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        self.path = log_path
        self.clock = Clock()
        self.loop = Loop(Log(DEBUG, fd=self.fd), grace=5.0, clock=self.clock)
        self.children = Children()
        self.loop.children = self.children
        self.model = Model()
        self.loop.use(self.model)  # type: ignore[arg-type]  # records any call

    def events(self) -> list[str]:
        with open(self.path) as f:
            return [line.split()[1] for line in f]  # after the time stamp

    def lines(self) -> str:
        with open(self.path) as f:
            return f.read()


@pytest.fixture
def fx() -> Iterator[Fixture]:
    with tempfile.NamedTemporaryFile() as f:
        fixture = Fixture(f.name)
        yield fixture
        fixture.loop.sel.close()
        os.close(fixture.fd)


def test_every_server_signal_has_an_action(fx: Fixture) -> None:
    assert set(fx.loop.actions) == {int(s) for s in SERVER_SIGNALS}
    names = {signal.Signals(n).name: action.__name__ for n, action in fx.loop.actions.items()}
    assert names == {
        "SIGTERM": "on_terminate",
        "SIGINT": "on_interrupt",
        "SIGQUIT": "on_quit",
        "SIGHUP": "on_signal",
        "SIGUSR2": "on_signal",
        "SIGTTIN": "on_resize",
        "SIGTTOU": "on_resize",
        "SIGCHLD": "on_child",
    }
    assert fx.loop.actions[signal.SIGHUP].__self__ is fx.loop.reloading  # type: ignore[attr-defined]
    assert fx.loop.actions[signal.SIGUSR2].__self__ is fx.loop.upgrading  # type: ignore[attr-defined]


def test_a_graceful_stop_drains_then_terminates_then_kills(fx: Fixture) -> None:
    fx.children.live = 2
    fx.loop.on_signals([signal.SIGTERM])
    assert fx.loop.stopping == "graceful"
    assert (fx.loop.phase, fx.loop.deadline) == ("drain", 105.0)
    assert "stop[('drain', True), ('shared', False)]" in fx.model.calls
    assert fx.loop.timeout() == 5.0
    fx.clock.now = 104.9
    fx.loop.on_deadlines(fx.clock.now)
    assert "terminate" not in fx.model.calls
    fx.clock.now = 105.0
    fx.loop.on_deadlines(fx.clock.now)
    assert fx.model.calls[-2:] == ["expire", "terminate"]
    assert (fx.loop.phase, fx.loop.deadline) == ("term", 105.0 + KILL_AFTER)
    fx.clock.now = 105.0 + KILL_AFTER
    fx.loop.on_deadlines(fx.clock.now)
    assert fx.children.sent == [signal.SIGKILL]
    assert (fx.loop.phase, fx.loop.deadline) == ("kill", None)
    assert not fx.loop.finished()
    fx.children.live = 0
    assert fx.loop.finished()
    assert [e for e in fx.events() if e in ("stop", "terminate", "kill")] == [
        "stop",
        "terminate",
        "kill",
    ]


def test_a_second_sigterm_changes_nothing(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGTERM])
    fx.clock.now = 102.0
    fx.loop.on_signals([signal.SIGTERM])
    assert (fx.loop.stopping, fx.loop.deadline) == ("graceful", 105.0)
    assert fx.model.calls.count("terminate") == 0


def test_a_second_sigint_stops_fast(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGINT])
    fx.clock.now = 101.0
    fx.loop.on_signals([signal.SIGINT])
    assert fx.loop.stopping == "fast"
    assert (fx.loop.phase, fx.loop.deadline) == ("term", 101.0 + KILL_AFTER)
    assert fx.model.calls.count("terminate") == 1


def test_sigquit_skips_the_drain_and_stops_taking_connections_without_one(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGQUIT])
    assert fx.loop.stopping == "fast"
    assert fx.model.calls[:3] == [
        "stop[('drain', False), ('shared', False)]",
        "expire",
        "terminate",
    ]
    fx.loop.on_signals([signal.SIGQUIT])
    assert fx.model.calls.count("terminate") == 1


def test_queued_connections_keep_the_loop_running(fx: Fixture) -> None:
    fx.model.pending = 2
    fx.loop.on_signals([signal.SIGTERM])
    assert "queued=2" in fx.lines()
    assert not fx.loop.finished()
    fx.model.pending = 0
    assert fx.loop.finished()


def test_signals_act_in_order_and_children_are_reaped_last(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGCHLD, signal.SIGTERM, signal.SIGCHLD])
    stop = fx.model.calls.index("stop[('drain', True), ('shared', False)]")
    assert fx.model.calls[stop + 1 :] == ["before_exits", "after_exits"]


def test_a_pool_signal_without_a_pool_is_ignored(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGTTIN])
    assert "resize" in fx.model.calls
    assert "signal-ignored" in fx.events()


def test_a_reload_while_stopping_is_ignored(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGTERM, signal.SIGHUP])
    assert "reload-ignored" in fx.events()


def test_no_upgrade_once_stopping(fx: Fixture) -> None:
    fx.loop.on_signals([signal.SIGTERM, signal.SIGUSR2])
    assert "upgrade-ignored" in fx.events()
    assert fx.loop.upgrading.current is None


def test_an_idle_loop_waits_without_a_timeout(fx: Fixture) -> None:
    assert fx.loop.timeout() is None


class Owner:
    def __init__(self) -> None:
        self.exits: list[tuple[int, float]] = []

    def on_exit(self, ended: Exited, now: float) -> None:
        self.exits.append((ended.pid, now))


def test_each_exit_goes_to_its_childs_owner(fx: Fixture) -> None:
    conns, upgrade = Owner(), Owner()
    fx.children.reaped = [
        Exited(11, Child(11, "peer", 0.0, -1, conns), 0, None, False),
        Exited(12, None, 0, None, False),  # forkserve did not start it
        Exited(13, Child(13, "peer", 0.0, -1, conns), None, 9, False),
    ]
    adopted = Exited(14, None, 0, None, False)
    adopted.owner = upgrade  # what ChildTable.reap sets for an adopted pid
    fx.children.reaped.append(adopted)
    fx.clock.now = 120.0
    fx.loop.on_signals([signal.SIGCHLD])
    assert conns.exits == [(11, 120.0), (13, 120.0)]
    assert upgrade.exits == [(14, 120.0)]
    assert fx.model.calls == ["before_exits", "after_exits"]
    assert "end-unknown pid=12 exit=0" in fx.lines()


def test_one_counter_per_source_whoever_serves_it() -> None:
    table = ChildTable()
    table.add(1, "a", source=7)
    table.add(2, "b", source=None)  # behind PROXY: no source yet
    table.counts.add(7)  # a busy prefork worker's connection
    assert table.open_from(7) == 2
    table.advertise(2, "c", 7)
    table.advertise(2, "c", 7)  # once only
    assert table.open_from(7) == 3
    table.counts.remove(7)
    assert table.open_from(7) == 2
