"""systemd's side of the OS shell: inherited sockets and readiness notifications.

The protocols themselves are parsed in core.activation (pure). Both sets of variables
are removed from the environment once read, so that no connection child, handler or
exec'd program sees them: a program that finds ``LISTEN_FDS`` or ``NOTIFY_SOCKET``
might take them for its own (sd_listen_fds(3) and sd_notify(3) both recommend
unsetting them).
"""

from __future__ import annotations

import errno
import os
import socket
import time

from forkserve._log import Log
from forkserve.core.activation import (
    LISTEN_VARIABLES,
    choose_sockets,
    notify_address,
    notify_message,
    parse_listen_fds,
    status_text,
)
from forkserve.core.errnames import errno_name

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import MutableMapping


def adopt_sockets(environ: MutableMapping[str, str]) -> tuple[int | None, int | None]:
    """Take the sockets passed by socket activation (or by an upgrading master).

    Returns:
        ``(listen_fd, metrics_fd)`` (see ``choose_sockets``); ``(None, None)`` when
        nothing was passed to this process. The descriptors are made
        close-on-exec, and the LISTEN_* variables are removed from ``environ``.

    Raises:
        UsageError: malformed variables, or more sockets than forkserve serves.
    """
    try:
        passed = parse_listen_fds(environ, os.getpid())
    finally:
        for name in LISTEN_VARIABLES:
            environ.pop(name, None)
    for fd, _ in passed:
        os.set_inheritable(fd, False)
    return choose_sockets(passed)


class Notifier:
    """Sends sd_notify(3) datagrams to the service manager.

    Args:
        value: ``NOTIFY_SOCKET`` as it was set (kept for an upgrade's new master).
        log: where a failed send is reported, once.

    Resource handling: owns an unbound datagram socket; ``close()`` closes it and
    children close their copy (``close_in_child``). Error handling: a failed send
    never stops the server; the first is logged, the rest are dropped.

    Raises:
        UsageError: ``value`` is neither a path nor ``@name``.
    """

    def __init__(self, value: str, log: Log) -> None:
        self.value = value
        self.address = notify_address(value)
        self.log = log
        self.failed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str], log: Log) -> Notifier | None:
        """A notifier if ``NOTIFY_SOCKET`` is set (and then removed from ``environ``)."""
        value = environ.pop("NOTIFY_SOCKET", None)
        return cls(value, log) if value else None

    def send(self, **fields: object) -> bool:
        """Send a notification without waiting; False when it is worth sending again
        (EAGAIN, ENOBUFS: the manager's socket is full for now)."""
        try:
            self.sock.sendto(notify_message(fields), self.address)
        except OSError as exc:
            if exc.errno not in (
                errno.ECONNREFUSED,
                errno.ENOENT,
                errno.EAGAIN,
                errno.ENOBUFS,
                errno.EPERM,
                errno.EACCES,
            ):
                raise
            if not self.failed:
                self.failed = True
                name = errno_name(exc.errno)
                self.log.warning("notify-failed", socket=self.value, error=name)
            return exc.errno not in (errno.EAGAIN, errno.ENOBUFS)
        return True

    def reloading(self) -> None:
        """``RELOADING=1`` with the CLOCK_MONOTONIC time, as Type=notify-reload wants."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def close_in_child(self) -> None:
        os.close(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()


# STATUS= is refreshed at most this often: a notification per accept would be a
# system call per connection for a line a human reads.
STATUS_INTERVAL = 1.0
# READY=1 or STOPPING=1 that found the manager's socket full is sent again this often
# until it goes: without READY=1 systemd kills the service at TimeoutStartSec.
RETRY_INTERVAL = 0.2


class Status:
    """Keeps systemd informed as the loop runs: READY, STATUS, STOPPING.

    Args:
        notifier: where notifications go.
        upgraded: started by a SIGUSR2 upgrade: the service is running already and
            the old master hands it over with MAINPID=, so no READY=1 here.
    """

    def __init__(self, notifier: Notifier, upgraded: bool = False) -> None:
        self.notifier = notifier
        self.upgraded = upgraded
        self.sent = ""
        self.next_at = 0.0
        self.due: float | None = None  # a change waits for next_at, or a retry
        self.stopping_sent = False
        self.unsent: dict[str, object] = {}  # READY/STOPPING to send again

    def ready(self, conns: str, again: bool = False) -> None:
        """READY=1 with the status: at start-up, and after a reload (``again``)."""
        self.sent = status_text("serving", conns)
        now = time.monotonic()
        if self.upgraded and not again:
            self.notifier.send(STATUS=self.sent)
        else:
            self.deliver({"READY": 1, "STATUS": self.sent}, now)
        self.next_at = now + STATUS_INTERVAL

    def deliver(self, fields: dict[str, object], now: float) -> None:
        """Send a notification that must arrive; keep it to send again if it did not."""
        if self.notifier.send(**fields):
            for key in fields:
                self.unsent.pop(key, None)  # an older copy, now superseded
        else:
            self.unsent.update(fields)
            self.due = now + RETRY_INTERVAL

    def update(self, stopping: bool, conns: str, now: float) -> None:
        """Called each turn of the loop: send what changed, rate-limited."""
        if stopping and not self.stopping_sent:
            self.stopping_sent = True
            self.unsent.pop("READY", None)  # too late for it
            self.deliver({"STOPPING": 1}, now)
        if self.unsent:
            if now < (self.due or 0.0):
                return
            fields, self.unsent = self.unsent, {}
            self.deliver(fields, now)
            if self.unsent:
                return
        text = status_text("stopping" if stopping else "serving", conns)
        if text == self.sent:
            self.due = None
        elif now < self.next_at:
            self.due = self.next_at
        else:
            self.notifier.send(STATUS=text)
            self.sent, self.next_at, self.due = text, now + STATUS_INTERVAL, None
