"""Exec mode: run a program for each connection, with the socket on fd 0 and 1.

This is what tcpserver, inetd and systemd's ``Accept=yes`` do. The child forkserve
forked for the connection becomes the program: there is no process in between, and
the program's exit code or signal is what the ``end`` line reports.
"""

from __future__ import annotations

import errno
import os
import socket

from forkserve._errors import EXIT_TEMPORARY, ProgramError
from forkserve._log import Log
from forkserve.child.connection import Connection
from forkserve.child.fresh import reset_process
from forkserve.child.handler import start_connection
from forkserve.child.prelude import Prelude
from forkserve.core.address import format_address, format_unix_address
from forkserve.core.errnames import errno_name
from forkserve.core.ucspi import endpoint, ucspi_environment, unix_environment

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Sequence

    from forkserve.child.edge import Edge


def find_program(name: str, path: str | None) -> str:
    """Find ``name`` the way execvp(3) does, once, at start-up.

    A name with a slash is used as it is; any other is searched for in ``path``
    (``$PATH``, or ``os.defpath`` when unset).

    Returns:
        The path to execute.

    Raises:
        ProgramError: not found, a directory, or not executable (exit 100).
    """
    if not name:
        raise ProgramError("empty program name")
    if "/" in name:
        return check_executable(name, name)
    for directory in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ProgramError(f"program {name!r} not found in PATH")


def check_executable(name: str, candidate: str) -> str:
    """Return ``candidate`` if exec could run it; raise ProgramError saying why not."""
    if not os.path.exists(candidate):
        raise ProgramError(f"program {name!r} not found")
    if os.path.isdir(candidate):
        raise ProgramError(f"program {name!r} is a directory")
    if not os.access(candidate, os.X_OK):
        raise ProgramError(f"program {name!r} is not executable")
    return candidate


class Program:
    """A program to run for each connection (exec mode), checked when created.

    Args:
        argv: the program and its arguments; ``argv[0]`` is searched for in
            ``$PATH`` like execvp(3), once, now.
        lookup_hosts: set ``TCPREMOTEHOST`` (and ``TCPLOCALHOST``, unless
            ``local_host`` is given) by reverse lookups in the child, like
            tcpserver's ``-h``. Off by default, like s6-tcpserver.
        local_host: ``TCPLOCALHOST`` without a lookup, like tcpserver's ``-l``.

    Raises:
        ProgramError: the program is not found or not executable (exit 100).
    """

    __slots__ = ("argv", "local_host", "lookup_hosts", "path")

    def __init__(
        self,
        argv: Sequence[str],
        *,
        lookup_hosts: bool = False,
        local_host: str | None = None,
    ) -> None:
        if isinstance(argv, str):
            raise ProgramError("argv must be a list of strings, not one string")
        if not argv:
            raise ProgramError("no program given")
        self.argv = list(argv)
        self.path = find_program(self.argv[0], os.environ.get("PATH"))
        self.lookup_hosts = lookup_hosts
        self.local_host = local_host

    def check_runnable(self, who: str) -> None:
        """Check, after the switch to ``--user``/``--group``, that the program found
        at start-up (as root, who may run anything with an x bit) runs as ``who``.

        Raises:
            ProgramError: it does not (exit 100).
        """
        if not os.access(self.path, os.X_OK):  # access(2) checks the real ids: ours now
            raise ProgramError(
                f"program {self.path!r} cannot be run as {who}: permission denied "
                "(on the file or a directory above it)"
            )

    def __repr__(self) -> str:
        return f"Program({self.argv!r})"


class ExecService:
    """The Service of exec mode: the child becomes ``program``.

    Before exec the child runs the edge (PROXY, TLS) and the prelude (limits,
    banner, handshake timeout), then undoes everything a parent changed that the
    program would inherit (see ``reset_process``); if exec fails, it logs
    ``exec-failed`` and returns 111, so the ``end`` line shows ``exit=111``.

    ``spawnable`` says, once, whether nothing Python must run in the connection's
    process before the program: no edge, no prelude step, no reverse lookup. Then
    the supervisor starts the program itself with posix_spawn (parent.spawn), with
    the same environment (``environment``) and the same fresh process.
    """

    __slots__ = ("edge", "log", "prelude", "program", "spawnable")

    def __init__(
        self,
        program: Program,
        log: Log,
        prelude: Prelude | None = None,
        edge: Edge | None = None,
    ) -> None:
        self.program = program
        self.log = log
        self.prelude = prelude if prelude is not None else Prelude()
        self.edge = edge
        self.spawnable = edge is None and not program.lookup_hosts and self.prelude.runs_nothing()

    def on_unix_socket(self) -> None:
        """Served on a Unix socket: never spawned, since the program's ``UNIXLOCALPID``
        is its own pid (as unixserver sets it), known only in a forked child."""
        self.spawnable = False

    def __call__(self, conn: socket.socket, info: Connection) -> int:
        started = start_connection(conn, info, self.edge, self.prelude)
        if isinstance(started, int):
            return started
        conn = started
        try:
            env = self.environment(conn, info)
        except OSError as exc:  # getsockname on a connection the client reset
            conn.close()
            return 0 if exc.errno in (errno.ENOTCONN, errno.ECONNRESET) else EXIT_TEMPORARY
        if self.edge is not None and self.edge.tls is not None:
            return self.run_over_tls(conn, env)
        reset_process(conn, self.log.fd)
        try:
            os.execve(self.program.path, self.program.argv, env)  # noqa: S606 - no shell, by design
        except OSError as exc:
            name = errno_name(exc.errno)
            self.log.warning(
                "exec-failed",
                pid=os.getpid(),
                peer=format_address(info.peer),
                program=self.program.path,
                error=name,
            )
        return EXIT_TEMPORARY

    def run_over_tls(self, conn: socket.socket, env: dict[str, str]) -> int:
        """TLS: the program gets plain bytes through a relay in this process (child.relay)."""
        import ssl

        from forkserve.child.relay import run_relayed
        from forkserve.child.tls import tls_environment

        assert isinstance(conn, ssl.SSLSocket)
        env.update(tls_environment(conn))
        return run_relayed(conn, self.program.path, self.program.argv, env, self.log.fd)

    def environment(
        self, conn: socket.socket, info: Connection, inherited: dict[str, str] | None = None
    ) -> dict[str, str]:
        """The program's environment: ours, minus stale UCSPI names, plus this connection's.

        Behind a PROXY header the addresses are the header's (``info.peer`` and
        ``info.local``), not the balancer's. ``inherited``: ours, filtered already
        (core.ucspi.inherited_environment), as the supervisor keeps it.
        """
        local = info.local if info.local is not None else conn.getsockname()
        remote = info.peer
        if conn.family == socket.AF_UNIX and info.local is None:
            return unix_environment(
                os.environ,
                format_unix_address(local).removeprefix("unix:"),
                (os.getpid(), os.getuid(), os.getgid()),
                remote,
                extra=info.env,
            )
        local_host, remote_host = self.program.local_host, None
        if self.program.lookup_hosts:
            remote_host = reverse_lookup(remote)
            if local_host is None:
                local_host = reverse_lookup(local)
        return ucspi_environment(
            os.environ if inherited is None else inherited,
            endpoint(local),
            endpoint(remote),
            connnum=info.connnum,
            local_host=local_host,
            remote_host=remote_host,
            extra=info.env,
            inherited=inherited is not None,
        )


def reverse_lookup(address: tuple[str, int]) -> str | None:
    """The host name of an address (/etc/hosts, then DNS), or None when it has none.

    Runs in the child, so a slow resolver delays only this connection.
    """
    try:
        name, _ = socket.getnameinfo(address[:2], socket.NI_NAMEREQD)
    except OSError:  # socket.gaierror included: EAI_NONAME, EAI_AGAIN, ...
        return None
    return name


def describe(argv: Sequence[str]) -> str:
    """The program for the ``listen`` line: its argv, shell-quoted."""
    import shlex

    return shlex.join(argv)
