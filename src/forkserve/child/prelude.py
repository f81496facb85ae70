"""What a child does for its connection before the handler or program runs.

In order: resource limits (``--limit-*``), the banner, the wait for the client's
first byte (``--handshake-timeout``), and the socket's idle timeout
(``--idle-timeout``, Python handlers only). Each step is skipped when unused, so a
plain server's child runs none of this.
"""

from __future__ import annotations

import os
import select
import socket

from forkserve.core.address import format_address

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from forkserve._log import Log
    from forkserve.child.connection import Connection

# Child exit codes (documented in the README), after timeout(1)'s 124.
EXIT_IDLE_TIMEOUT = 124
EXIT_HANDSHAKE_TIMEOUT = 125


def write_banner(conn: socket.socket, banner: bytes) -> bool:
    """Send ``banner`` to the client, as tcpserver's ``-B`` does; False if it is gone.

    A client that resets the connection before the banner is out is not a server
    fault: the caller ends the child quietly (exit 0), as a handler would.
    """
    try:
        conn.sendall(banner)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return False
    return True


def wait_readable(conn: socket.socket, timeout: float) -> bool:
    """Wait until the client sends a byte (or closes, or errs); False on timeout."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return bool(poller.poll(max(1, round(timeout * 1000))))


class Prelude:
    """The steps before the handler or program (see the module docstring).

    Args:
        banner: bytes written to the client first (``--banner``).
        handshake_timeout: seconds the client has to send its first byte (0: no limit).
        idle_timeout: the socket timeout the handler runs with (0: none).
        rlimits: ``(resource, soft, hard)`` triples for setrlimit(2), checked by the
            parent at start-up; ``resource.RLIMIT_CPU``'s soft limit is counted from
            the CPU time the process has used so far (a prefork worker serves many).
        log: where the child logs a handshake timeout.
    """

    __slots__ = ("banner", "handshake_timeout", "idle_timeout", "log", "rlimits")

    def __init__(
        self,
        banner: bytes = b"",
        *,
        handshake_timeout: float = 0.0,
        idle_timeout: float = 0.0,
        rlimits: tuple[tuple[int, int, int], ...] = (),
        log: Log | None = None,
    ) -> None:
        self.banner = banner
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.rlimits = rlimits
        self.log = log

    def runs_nothing(self) -> bool:
        """Whether every step is off: the connection's process has nothing to do here."""
        return not (self.banner or self.handshake_timeout or self.idle_timeout or self.rlimits)

    def __call__(self, conn: socket.socket, info: Connection) -> int | None:
        """Run the steps; None to go on, or the exit code the child ends with now.

        Resource handling: closes ``conn`` when it returns an exit code.
        """
        if self.rlimits:
            apply_rlimits(self.rlimits)
        if self.banner and not write_banner(conn, self.banner):
            conn.close()
            return 0
        if self.handshake_timeout and not wait_readable(conn, self.handshake_timeout):
            conn.close()
            self.log_timeout(info, "handshake", self.handshake_timeout)
            return EXIT_HANDSHAKE_TIMEOUT
        if self.idle_timeout:
            conn.settimeout(self.idle_timeout)
        return None

    def log_timeout(self, info: Connection, kind: str, seconds: float) -> None:
        """The ``timeout`` line a child writes before it exits 124 or 125."""
        if self.log is not None:
            peer = format_address(info.peer)
            self.log.info("timeout", pid=os.getpid(), peer=peer, kind=kind, after=f"{seconds:g}s")


def apply_rlimits(rlimits: tuple[tuple[int, int, int], ...]) -> None:
    """setrlimit(2) each limit; RLIMIT_CPU's soft limit counts from the CPU time used.

    A fresh fork-mode child has used none (fork resets the counters); a prefork worker
    gets the same budget for each connection it serves.
    """
    import resource  # loaded by the parent at start-up (see rlimit_triples)

    for which, soft, hard in rlimits:
        if which == resource.RLIMIT_CPU:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            soft += int(usage.ru_utime + usage.ru_stime)
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
