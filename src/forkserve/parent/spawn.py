"""Exec mode without a fork: the supervisor starts the program with posix_spawn(3).

When nothing Python must run in the connection's process before the program (see
``ExecService.spawnable``; never on a Unix socket, whose program's ``UNIXLOCALPID`` is
its own pid), forking a copy of the supervisor only to exec at once
costs what docs/performance.md measures: fork(2) copies the page tables of the
biggest process, every page the supervisor writes while the child still shares it
is copied, and the exit tears the copy down again. glibc's posix_spawn creates the
child with clone(CLONE_VM | CLONE_VFORK): it runs on the supervisor's memory, copies
nothing, and the supervisor waits (tens of microseconds) until it has exec'd. This
is how s6-tcpserverd starts its programs (``cspawn``).

The program gets the process ``child.fresh.reset_process`` gives it after a fork:

- the connection on fd 0 and 1, the server's fd 2 as it is, nothing else: every
  descriptor of the supervisor is close-on-exec (Python makes them so, the listener
  inherited from systemd or an old master too: parent.systemd), and the few a
  wrapper left it without the flag (``exec 200>lock``), found once at start, are
  closed by file actions;
- every signal at its default (``setsigdef``: the ignored ones, SIGPIPE first, and
  the handled ones) and none blocked (``setsigmask``);
- a process group of its own (``setpgroup=0``, set in the child before exec: no race
  with a signal from the supervisor);
- the same environment, built here by the service itself (from ``os.environ``
  filtered once, when the Spawner is made: at start and at each reload).

Failures: glibc reports a failed exec as posix_spawn's error (it reaps the child it
made itself). EAGAIN and ENOMEM are a failed fork (see parent.forkmodel's
fork_failed: pause accepting); any other errno is the program's (ENOENT, EACCES,
ENOEXEC: removed, replaced or made unrunnable after start-up), logged as
``exec-failed``: one line, no ``accept`` and no ``end``, since no process ran; the
connection is closed, counted as rejected for ``exec-failed``, and the next one is
served as usual.
"""

from __future__ import annotations

import errno
import os
import signal

from forkserve.child.exec import ExecService  # parent.assemble has it loaded already
from forkserve.core.errnames import errno_name
from forkserve.core.ucspi import inherited_environment

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    import socket
    from typing import Any

    from forkserve.child.connection import Connection
    from forkserve.child.handler import Service

# posix_spawn errors that are the system's, not the program's: as a failed fork.
SPAWN_CAPACITY = (errno.EAGAIN, errno.ENOMEM)
# Signals a process cannot catch or ignore (as child.fresh.UNCATCHABLE).
UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


class Spawner:
    """Starts ``service``'s program for each connection, from the supervisor.

    ``loop`` is the serving loop (parent.loop; not named as a type, which would
    close a cycle of type-only imports): its ``log`` and ``metrics`` (replaced when
    --metrics is attached, so looked up at each use).

    Resource handling: the caller keeps and closes the connection; the program has
    its own copies on fd 0 and 1.
    """

    __slots__ = ("argv", "closes", "inherited", "loop", "path", "service", "sigdef")

    def __init__(self, service: ExecService, loop: Any) -> None:
        self.service = service
        self.loop = loop
        self.path = service.program.path
        self.argv = service.program.argv
        # valid_signals() leaves out the real-time signals glibc reserves (32, 33).
        self.sigdef = tuple(sig for sig in signal.valid_signals() if sig not in UNCATCHABLE)
        self.closes = tuple((os.POSIX_SPAWN_CLOSE, fd) for fd in inheritable_fds())
        # The environment every program inherits, filtered once: the server changes
        # its own only while it starts (NOTIFY_SOCKET, LISTEN_FDS and an upgrade's
        # variables are taken out before the loop, hence before this).
        self.inherited = inherited_environment(os.environ)

    def __call__(self, conn: socket.socket, info: Connection, peer_text: str) -> int | None:
        """Start the program on ``conn``; return its pid, or None when it could not
        run (logged; the caller closes ``conn``).

        Raises:
            OSError: EAGAIN or ENOMEM: no process could be made (as fork(2)).
        """
        try:
            env = self.service.environment(conn, info, self.inherited)
        except OSError as exc:  # getsockname on a connection the client reset
            error = errno_name(exc.errno)
            self.loop.log.debug("closed", peer=peer_text, before="exec", error=error)
            return None
        fd = conn.fileno()
        # dup2 clears close-on-exec on 0 and 1 (glibc does so even when fd is 0 or
        # 1 already); conn's own descriptor keeps it, and closes at exec.
        actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1), *self.closes]
        try:
            return os.posix_spawn(
                self.path,
                self.argv,
                env,
                file_actions=actions,
                setpgroup=0,
                setsigmask=(),
                setsigdef=self.sigdef,
            )
        except OSError as exc:
            if exc.errno in SPAWN_CAPACITY:
                raise
            self.loop.log.warning(
                "exec-failed", peer=peer_text, program=self.path, error=errno_name(exc.errno)
            )
            self.loop.metrics.rejected("exec-failed")
            return None


def spawner_for(service: Service, loop: Any) -> Spawner | None:
    """A Spawner when ``service`` is a program nothing must run before (decided once
    per service: at start and at each reload); None: fork for each connection."""
    return Spawner(service, loop) if spawns(service) else None  # type: ignore[arg-type]


def spawns(service: Service) -> bool:
    """Whether each connection of ``service`` is a program posix_spawned from the
    supervisor (no fork, so no forker: see parent.forker)."""
    return isinstance(service, ExecService) and service.spawnable


def inheritable_fds() -> list[int]:
    """Descriptors above 2 without close-on-exec: what a program would inherit.

    None of forkserve's own: whatever a wrapper or a parent left open (see
    test_exec's inherited lock). Found from /proc/self/fd; without /proc, every
    number below the descriptor limit is tried (once, at start or reload).
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # /proc not mounted
        names = [str(fd) for fd in range(os.sysconf("SC_OPEN_MAX"))]
    found = []
    for name in names:
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:  # EBADF: listdir's own descriptor, closed by now
            continue
    return sorted(found)
