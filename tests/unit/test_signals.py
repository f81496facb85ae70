"""The signal pipe: every signal is recorded, even once the wakeup socket is full."""

from __future__ import annotations

import select
import signal

from forkserve.parent.signals import SignalPipe


def test_no_signal_is_lost_when_the_wakeup_socket_is_full() -> None:
    """CPython drops wakeup bytes silently once the socket is full (issue 12,
    finding 2): the handler's own record must still carry SIGTERM."""
    with SignalPipe() as sigs:
        for _ in range(2000):  # far beyond what the socket holds (278 bytes here)
            signal.raise_signal(signal.SIGCHLD)
        signal.raise_signal(signal.SIGTERM)
        assert select.select([sigs], [], [], 0)[0], "the loop is woken"
        received = sigs.drain()
        assert received.count(signal.SIGTERM) == 1
        assert signal.SIGCHLD in received
        assert received[-1] == signal.SIGTERM, "arrival order is kept"
        assert sigs.drain() == []
        assert not select.select([sigs], [], [], 0)[0], "drained: nothing wakes the loop"


def test_order_and_repeats_are_kept() -> None:
    """Two SIGINTs mean a fast stop; SIGTTIN three times grows the pool by three."""
    with SignalPipe() as sigs:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTTIN, signal.SIGINT):
            signal.raise_signal(sig)
        signal.raise_signal(signal.SIGTTIN)
        signal.raise_signal(signal.SIGTTIN)
        assert sigs.drain() == [
            signal.SIGHUP,
            signal.SIGINT,
            signal.SIGTTIN,
            signal.SIGINT,
            signal.SIGTTIN,
            signal.SIGTTIN,
        ]


def test_a_flood_of_one_signal_is_recorded_in_bounded_memory() -> None:
    with SignalPipe() as sigs:
        for _ in range(20000):
            signal.raise_signal(signal.SIGCHLD)
        signal.raise_signal(signal.SIGHUP)
        received = sigs.drain()
        assert len(received) <= 4096 + len(sigs.signals)
        assert received[-1] == signal.SIGHUP
