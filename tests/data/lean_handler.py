"""A handler that answers which of the supervisor's own modules its process holds.

A prefork worker forked from the forker (forker.process) carries the forker's small
image: none of the supervisor's loop, pool, metrics or reload code. It answers
``none``, or the names it found, comma-separated.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

SUPERVISOR_ONLY = (
    "forkserve.parent.loop",
    "forkserve.prefork.pool",
    "forkserve.prefork.workers",
    "forkserve.parent.forker",
    "forkserve.config.reload",
    "forkserve.core.metrics",
)


def handle(conn: socket.socket, peer: Any) -> None:
    found = [name for name in SUPERVISOR_ONLY if name in sys.modules]
    conn.sendall((",".join(found) or "none").encode())
