"""The event log: one line per event on standard error.

Lines are written with a single ``os.write`` each, so lines from the parent and its
children (which share the descriptor) do not interleave mid-line as long as a line is
shorter than PIPE_BUF (4096 bytes). Nothing here takes a lock: the parent never runs
threads, and a child that logs only ever writes its own lines.
"""

from __future__ import annotations

import errno
import os
import time

from forkserve._events import Stamper, render_text

QUIET, INFO, DEBUG = 0, 1, 2


class Log:
    """Writes events to a file descriptor (standard error by default).

    Args:
        level: QUIET shows warnings and errors only; INFO adds one line per connection
            (``accept`` and ``end``); DEBUG adds internal detail.
        fd: where lines go.
    """

    def __init__(self, level: int = INFO, fd: int = 2) -> None:
        self.level = level
        self.fd = fd
        self.stamp = Stamper()

    def _emit(self, event: str, fields: dict[str, object]) -> None:
        line = render_text(time.time(), event, fields, self.stamp)
        data = (line + "\n").encode("utf-8", "replace")
        while data:
            try:
                written = os.write(self.fd, data)
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
                continue
            except OSError as exc:
                # A closed or full log must never take the server down with it.
                if exc.errno in (errno.EPIPE, errno.EBADF, errno.EAGAIN, errno.EIO):
                    return
                raise
            data = data[written:]

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
