"""The event log: one line per event on standard error, written without blocking.

Lines are written with a single write each, so lines from the parent and its children
(which share the log) do not interleave mid-line as long as a line is shorter than
PIPE_BUF (4096 bytes). Nothing here takes a lock: the parent never runs threads, and
a child that logs only ever writes its own lines.

A log reader that stops reading must never stop the server (issue 12, finding 3):
with a blocking stderr the parent hung in write(2) after 64 KiB, and accepted,
reaped and answered nothing more. So the log is written through a descriptor of its
own on which writes never wait (see ``open_log``): the parent drops a line that does
not fit, whole, counts it, and once the log has room again says ``log-dropped n=N``
(a line partly written is finished first: never half a line). A child (a connection,
a pool worker) waits for room, but CHILD_WAIT seconds at most in its life, then
drops its lines the same way: a full log never hangs a child forever.

Why a descriptor of its own, not O_NONBLOCK on fd 2: the flag belongs to the open
file description, which fd 2 shares with every child, every exec'd program (their
stderr) and whoever else holds it (a shell, other services on the same journal
stream); a program that does not expect EAGAIN on its stderr would lose its output.
So: a pipe, FIFO or terminal is opened anew through ``/proc/self/fd/2`` (a new
description of the same pipe, O_NONBLOCK on it alone); a socket (systemd's journal
stream) is written with ``send(MSG_DONTWAIT)``, a flag of the call, not of the
socket; a regular file never waits for a reader and is written as it is. Should
``/proc`` be missing, the parent writes a pipe only when poll(2) says it has room.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import stat
import time

from forkserve.core.errnames import errno_name
from forkserve.core.logline import Stamper, render_json, render_text

QUIET, INFO, DEBUG = 0, 1, 2
# --log-format: how each event is written.
FORMATS = ("text", "json")
# A child (connection or pool worker) whose log is full waits for room this long at
# most over its whole life; after that it drops its lines at once, as the parent does.
CHILD_WAIT = 1.0
# Errors after which the line is lost, not counted: nobody will ever read the log
# (EPIPE, EBADF, ...), or the disk it is on is full (a regular file never stalls).
LOST_ERRNOS = (
    errno.EPIPE,
    errno.EBADF,
    errno.EIO,
    errno.ECONNRESET,
    errno.ENOTCONN,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
)


def open_log(fd: int) -> tuple[int, socket.socket | None, bool]:
    """A descriptor for ``fd``'s file whose writes never wait (see the module docstring).

    Returns:
        ``(descriptor, socket or None, poll_first)``: write to the socket with
        MSG_DONTWAIT if there is one, else to the descriptor; ``poll_first`` when
        the descriptor is ``fd`` itself, blocking, and only poll(2) says it has room.
        New descriptors are close-on-exec: programs never see them.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return fd, None, False  # closed: writes fail with EBADF, and are ignored
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))
        return sock.fileno(), sock, False
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return fd, None, False  # a regular file: the disk, never a reader, holds it up
    try:
        flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        return os.open(f"/proc/self/fd/{fd}", flags), None, False
    except OSError:
        return fd, None, os.get_blocking(fd)


class Log:
    """Writes events to a file descriptor (standard error by default), never blocking.

    Args:
        level: QUIET shows warnings and errors only; INFO adds one line per connection
            (``accept`` and ``end``); DEBUG adds internal detail.
        fd: where lines go (written through a descriptor of the log's own: ``fd``
            is then that one, which an exec'd child keeps to report a failed exec).
        format: "text" (``TS EVENT k=v ...``) or "json" (one object per line).

    Raises:
        ValueError: an unknown format.

    Error handling: a line that does not fit is dropped whole and counted (see the
    module docstring); a log nobody can read any more (EPIPE, EBADF) loses its lines.
    """

    def __init__(self, level: int = INFO, fd: int = 2, format: str = "text") -> None:
        if format not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {format!r}")
        self.level = level
        self.fd, self.sock, self.poll_first = open_log(fd)
        self.set_format(format)
        self.stamp = Stamper()
        self.pid = os.getpid()  # the process that never waits; its children may
        self.dropped = 0  # lines dropped since the last log-dropped line
        self.rest = b""  # the end of a line partly written, to finish first
        self.waited = 0.0  # in a child: seconds spent waiting for room
        self.sel: selectors.BaseSelector | None = None  # the parent's loop, while attached
        self.watching = False

    def set_format(self, format: str) -> None:
        """Switch between "text" and "json" (a SIGHUP reload may)."""
        self.format = format
        self._render = render_json if format == "json" else render_text

    def _line(self, event: str, fields: dict[str, object]) -> bytes:
        return (self._render(time.time(), event, fields, self.stamp) + "\n").encode(
            "utf-8", "replace"
        )

    def _emit(self, event: str, fields: dict[str, object]) -> None:
        if (self.rest or self.dropped) and not self.catch_up():
            self.dropped += 1
            return
        self._put(self._line(event, fields))

    def raw(self, text: str) -> None:
        """Lines written as they are (a handler's traceback, in a child), the same
        way: whole or dropped and counted, and never a wait without end."""
        if (self.rest or self.dropped) and not self.catch_up():
            self.dropped += 1
            return
        self._put(text.encode("utf-8", "replace"))

    def _put(self, data: bytes) -> None:
        written = self._write(data)
        if written < len(data):
            if not written:
                self.dropped += 1
            else:
                self.rest = data[written:]
                if self.catch_up():  # a child may wait for room for the rest
                    return
            self._stalled()

    def catch_up(self) -> bool:
        """Finish a line partly written, then say ``log-dropped n=N``; True once the
        log is clear. Called before each line, and by the loop once the log has room."""
        if self.rest:
            self.rest = self.rest[self._write(self.rest) :]
            if self.rest:
                return False
        if self.dropped:
            notice = self._line("log-dropped", {"n": self.dropped, "pid": os.getpid()})
            written = self._write(notice)
            if not written:
                return False
            self.dropped = 0
            self.rest = notice[written:]
        return not self.rest

    def _write(self, data: bytes) -> int:
        """Bytes of ``data`` written, 0 when the log is full; never waits in the parent."""
        while True:
            try:
                if self.sock is not None:
                    return self.sock.send(data, socket.MSG_DONTWAIT)
                if self.poll_first and not _has_room(self.fd, 0.0):
                    raise BlockingIOError  # noqa: TRY301 - the same way as the others'
                return os.write(self.fd, data)
            except BlockingIOError:
                if not self._wait_in_child():
                    return 0
            except OSError as exc:
                if exc.errno in LOST_ERRNOS:
                    return len(data)  # lost, not counted (see LOST_ERRNOS)
                raise

    def _wait_in_child(self) -> bool:
        """A child waits for room, CHILD_WAIT seconds in its life at most; the parent
        never waits. True when there may be room now."""
        left = CHILD_WAIT - self.waited
        if left <= 0 or os.getpid() == self.pid:
            return False
        started = time.monotonic()
        room = _has_room(self.fd, left)
        self.waited += time.monotonic() - started
        return room

    def move_out_of_the_way(self, lowest: int) -> None:
        """In a child about to place descriptors of its own on low numbers (an
        upgrade's new master): move the log's descriptor to ``lowest`` or above."""
        if self.fd < lowest and self.fd > 2:
            import fcntl  # parent.upgrade imported it in the parent: no disk read after --user

            moved = fcntl.fcntl(self.fd, fcntl.F_DUPFD_CLOEXEC, lowest)
            if self.sock is not None:
                self.sock.detach()
                self.sock = socket.socket(fileno=moved)
            self.fd = moved

    def in_child(self) -> None:
        """In a freshly forked child: the parent's backlog (the end of a line it
        wrote in part, its count of dropped lines) is the parent's to write."""
        if self.rest or self.dropped or self.sel is not None:
            self.rest, self.dropped, self.sel, self.watching = b"", 0, None, False

    def stopping(self) -> None:
        """The parent serves no more: its last lines (``stopped``, the count of lines
        dropped) may wait for room as a child's do, CHILD_WAIT seconds at most."""
        self.pid = 0

    # -- the parent's loop watches a full log for room ------------------------------

    def attach(self, sel: selectors.BaseSelector) -> None:
        """From now on a full log is watched in ``sel`` until it has room again."""
        self.sel = sel
        if self.rest or self.dropped:
            self._stalled()

    def detach(self) -> None:
        if self.sel is not None and self.watching:
            self.sel.unregister(self.fd)
        self.sel, self.watching = None, False

    def _stalled(self) -> None:
        if self.sel is not None and not self.watching and os.getpid() == self.pid:
            self.sel.register(self.fd, selectors.EVENT_WRITE, self._on_room)
            self.watching = True

    def _on_room(self, mask: int) -> None:
        if self.catch_up() and self.sel is not None:
            self.sel.unregister(self.fd)
            self.watching = False

    def info(self, event: str, **fields: object) -> None:
        """An event an operator follows: a connection starts or ends, the server stops."""
        if self.level >= INFO:
            self._emit(event, fields)

    def debug(self, event: str, **fields: object) -> None:
        """Detail for debugging forkserve itself."""
        if self.level >= DEBUG:
            self._emit(event, fields)

    def warning(self, event: str, **fields: object) -> None:
        """Something an operator must see even with ``-q``."""
        self._emit(event, fields)

    def notice(self, event: str, **fields: object) -> None:
        """Life-cycle events (listening, stopping, stopped): shown even with ``-q``."""
        self._emit(event, fields)


def write_once(fd: int, data: bytes) -> str:
    """Write a short line to ``fd`` only if it has room now; return "" when it was
    written whole, else the reason (``EAGAIN``, ``EPIPE``...). For the one line
    ``--print-port`` writes on standard output, which may be a pipe nobody reads.

    poll(2) says whether there is room, and a line this short fits whole in the room
    it saw; no descriptor is opened for it (a test that counts the server's
    descriptors once it has read the port must not see one come and go).
    """
    try:
        if not _has_room(fd, 0.0):
            return "EAGAIN"
        written = os.write(fd, data)
    except OSError as exc:
        return errno_name(exc.errno)
    return "" if written == len(data) else "EAGAIN"


def _has_room(fd: int, timeout: float) -> bool:
    """Whether ``fd`` can take a line now, waiting up to ``timeout`` seconds for it."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(timeout * 1000))
