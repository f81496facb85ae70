"""Signals as a readable descriptor.

The parent points ``signal.set_wakeup_fd`` at a non-blocking socketpair and selects
on the other end beside its listeners (asyncio's ``add_signal_handler`` and trio's
wakeup socketpair work the same way). The wakeup socket only wakes the loop: once it
is full (278 one-byte writes here, reached while the parent is busy or held up and
children keep exiting) CPython drops further bytes silently, SIGTERM's included
(issue 12, finding 2). So the Python-level handler records each signal itself, in
arrival order, and the loop reads the records (skalibs' selfpipe never loses one).

The handler does nothing else: no logging, no lock, nothing that allocates beyond
one list slot, so nothing can deadlock on a lock it interrupted (the seed's
``printf`` in its SIGCHLD handler did exactly that under load).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # C functions: no enum conversions
import os
import signal
import socket
from collections.abc import Iterable
from types import FrameType, TracebackType

# The signals the parent handles: children, stop (graceful and fast), and the ones
# later features use (reload, upgrade, pool size). The child resets every one of them.
SERVER_SIGNALS = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


# The same signals as plain ints, for the child's path (see reset_in_child).
SERVER_SIGNUMS = tuple(int(sig) for sig in SERVER_SIGNALS)


def block(signums: tuple[int, ...] = SERVER_SIGNUMS) -> None:
    _signal.pthread_sigmask(_signal.SIG_BLOCK, signums)


def unblock(signums: tuple[int, ...] = SERVER_SIGNUMS) -> None:
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, signums)


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pid`` leads (a child and what it started);
    if the group is gone or not yet formed, to the child itself; nothing if it exited
    (the reaper will see it). Only for a child not yet reaped: never a reused pid."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def reset_in_child(signums: tuple[int, ...] = SERVER_SIGNUMS) -> None:
    """Default dispositions and no wakeup fd, for a freshly forked child.

    Calls the C functions with ints: the ``signal`` module's wrappers convert every
    argument and result through ``enum``, and each object that touches is a page
    the child copies from its parent (measured: about 300 KiB per child).
    """
    _signal.set_wakeup_fd(-1)
    for signum in signums:
        _signal.signal(signum, _signal.SIG_DFL)


# Records kept at most, besides one more of each signal not yet among them: a flood
# of one signal (SIGCHLD from thousands of exits) adds nothing a record of it does
# not already say, and must not grow the parent without bound.
MAX_RECORDS = 4096


class SignalPipe:
    """Routes ``signals`` to a descriptor the main loop can select on.

    Resource handling: owns a socketpair and the process's signal dispositions for
    ``signals``; ``close()`` restores both. Must be created in the main thread.
    """

    def __init__(self, signals: Iterable[signal.Signals] = SERVER_SIGNALS) -> None:
        self.signals = tuple(signals)
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.arrived: list[int] = []  # the records: signal numbers, in arrival order
        self._saved = {sig: signal.signal(sig, self._record) for sig in self.signals}
        # warn_on_full_buffer=False: a burst of signals may fill the socket; one byte
        # is enough to wake the loop, and the records say which signals came.
        self._saved_wakeup = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._closed = False

    def _record(self, signum: int, frame: FrameType | None) -> None:
        """The Python-level handler: one record per signal (see MAX_RECORDS).

        Runs in the main thread between two bytecodes of the loop; ``append`` is
        one step, so a record is never half made. ``take`` swaps the list out.
        """
        arrived = self.arrived
        if len(arrived) < MAX_RECORDS or signum not in arrived:
            arrived.append(signum)

    def fileno(self) -> int:
        return self._read.fileno()

    def clear(self) -> None:
        """Empty the wakeup socket (its bytes only woke the loop) without blocking."""
        while True:
            try:
                if not self._read.recv(4096):  # pragma: no cover - we hold the write end
                    return
            except BlockingIOError:
                return

    def take(self) -> list[int]:
        """The signals recorded since the last call, in arrival order.

        One swap: a handler that runs before it appends to the list returned, one
        that runs after to the next; its wakeup byte wakes the loop for it.
        """
        if not self.arrived:
            return []
        received, self.arrived = self.arrived, []
        return received

    def drain(self) -> list[int]:
        """Empty the wakeup socket, then take the records (``clear``, ``take``)."""
        self.clear()
        return self.take()

    def close(self) -> None:
        """Restore the previous dispositions and wakeup fd; close the socketpair."""
        if self._closed:
            return
        self._closed = True
        signal.set_wakeup_fd(self._saved_wakeup)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._read.close()
        self._write.close()

    def close_in_child(self) -> None:
        """In a forked child: drop the wakeup fd, default every handled signal, close.

        SIGPIPE is left as Python set it (ignored, so writes raise BrokenPipeError);
        exec mode restores it before exec. The descriptors are closed by number: the
        socket objects are never used again in the child, which ends in os._exit.
        """
        reset_in_child()
        os.close(self._read.fileno())
        os.close(self._write.fileno())

    def __enter__(self) -> SignalPipe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
