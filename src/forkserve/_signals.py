"""Signals as a readable descriptor.

The parent installs no-op Python handlers and points ``signal.set_wakeup_fd`` at a
non-blocking socketpair; the C-level handler writes each signal's number there, and
the main loop selects on the other end beside its listeners. Nothing runs inside a
signal handler (asyncio's ``add_signal_handler`` and trio's wakeup socketpair work the
same way), so nothing can deadlock on a lock a handler interrupted: the seed's
``printf`` in its SIGCHLD handler did exactly that under load.
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


def reset_in_child(signums: tuple[int, ...] = SERVER_SIGNUMS) -> None:
    """Default dispositions and no wakeup fd, for a freshly forked child.

    Calls the C functions with ints: the ``signal`` module's wrappers convert every
    argument and result through ``enum``, and each object that touches is a page
    the child copies from its parent (measured: about 300 KiB per child).
    """
    _signal.set_wakeup_fd(-1)
    for signum in signums:
        _signal.signal(signum, _signal.SIG_DFL)


def _noop(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wakeup fd already carries the news."""


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
        self._saved = {sig: signal.signal(sig, _noop) for sig in self.signals}
        # warn_on_full_buffer=False: a burst of SIGCHLD may fill the pipe; one byte
        # is enough to make the loop reap every child, so dropped bytes are harmless.
        self._saved_wakeup = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._closed = False

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> list[int]:
        """Read every pending signal number, in arrival order, without blocking."""
        received: list[int] = []
        while True:
            try:
                data = self._read.recv(4096)
            except BlockingIOError:
                return received
            if not data:  # pragma: no cover - the write end lives as long as we do
                return received
            received.extend(data)

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
