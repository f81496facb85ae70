"""Accepting under the errno policy (see parent.listeners): fork mode's ``Acceptor``."""

from __future__ import annotations

import socket
import time

from forkserve.core.errnames import errno_name
from forkserve.parent.listeners import (
    ACCEPT_BACK_OFF,
    ACCEPT_PAUSE,
    ACCEPT_RETRY,
    Listener,
    accept_action,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any


class Acceptor:
    """Accepts from ``listener`` under the errno policy (see parent.listeners):
    capacity errnos pause accepting for ACCEPT_PAUSE, logged once per burst."""

    __slots__ = ("burst", "listener", "log", "paused_until")

    def __init__(self, listener: Listener, log: Any) -> None:
        self.listener: Listener | None = listener
        self.log = log
        self.paused_until = 0.0
        self.burst: tuple[str, int] | None = None  # (errno name, failures) while paused

    def accept(self) -> tuple[socket.socket, Any] | None:
        """Accept one connection; None when there is none (or accepting paused).

        Raises:
            OSError: an errno no policy names: a bug, so it crashes loudly.
        """
        assert self.listener is not None
        while True:
            try:
                conn, peer = self.listener.accept()
            except BlockingIOError:
                return None
            except OSError as exc:
                action = accept_action(exc.errno)
                if action == ACCEPT_RETRY:
                    continue
                if action == ACCEPT_BACK_OFF:
                    self.pause(errno_name(exc.errno))
                    return None
                raise  # ACCEPT_CLOSED too: nothing shuts fork mode's listener down
            if self.burst is not None:
                name, failures = self.burst
                self.log.notice("accept-resumed", after=name, failures=failures)
                self.burst = None
            return conn, peer

    def pause(self, reason: str) -> None:
        """Stop accepting for ACCEPT_PAUSE; log only the first failure of a burst."""
        if self.burst is None:
            self.log.warning("accept-paused", error=reason, pause=f"{ACCEPT_PAUSE}s")
            self.burst = (reason, 0)
        self.burst = (self.burst[0], self.burst[1] + 1)
        self.paused_until = time.monotonic() + ACCEPT_PAUSE

    def resume_if_due(self, now: float) -> None:
        """The pause is over at ``now``: accept again."""
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0

    def close(self) -> None:
        """Close the listener: the kernel refuses new clients from now on."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
