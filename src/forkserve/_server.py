"""The public Python API: ``forkserve.Server``."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType

from forkserve._errors import UsageError
from forkserve._log import Log
from forkserve.child.exec import ExecService, Program
from forkserve.child.exec import describe as describe_program
from forkserve.child.handler import Handler, echo
from forkserve.config.values import Settings
from forkserve.core.address import is_unix_address, parse_listen_address
from forkserve.core.names import ASYNC, PREFORK
from forkserve.core.names import MODES as MODES  # noqa: PLC0414 - re-exported: bench runs each
from forkserve.parent.assemble import (
    bind_metrics,
    build_child_side,
    check_settings,
    serve_metrics,
    take_handover,
)
from forkserve.parent.forkmodel import ForkModel
from forkserve.parent.listeners import Listener
from forkserve.parent.loop import Loop
from forkserve.prefork.policy import PoolPolicy
from forkserve.prefork.pool import Pool

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from socketserver import BaseRequestHandler
    from typing import Unpack

    from forkserve.config.values import Options
    from forkserve.core.gate import Policy
    from forkserve.parent.endpoint import MetricsEndpoint
    from forkserve.parent.systemd import Notifier

    # What a SIGHUP reload returns: the new settings, the names of those that
    # changed (setting keys: ``max-conns``), and of changes that need an upgrade.
    ReloadSource = Callable[[], tuple[Settings, list[str], list[str]]]


class Server:
    """A TCP server that forks one process per connection and runs ``handler`` in it.

    ``handler`` is a Python callable, the name of one (``"pkg.module:function"``,
    ``"path/file.py:function"`` or a built-in: ``"echo"``, ``"discard"``,
    ``"daytime"``, ``"chargen"``), a ``socketserver.BaseRequestHandler`` subclass
    (run as socketserver runs it: see ``forkserve.RequestHandler``), or a
    ``forkserve.Program`` to exec (exec mode).

    Binds when constructed, so ``address`` is known (port 0 picks a free port) and a
    bind failure raises here, before anything else starts.

    The settings are keyword arguments (``max_conns=100``), or a
    ``forkserve.config.values.Settings`` passed as ``settings`` (keyword arguments
    given too override its values); an unknown keyword raises TypeError.

    Args:
        address: ``(host, port)`` or ``"[HOST:]PORT"`` text (``"[::1]:9000"``), or a
            Unix-domain socket: ``"unix:PATH"``, ``"unix:@NAME"`` (abstract).
        handler: called as ``handler(conn, peer)`` in the child (see ``Handler``); a
            request handler class, or its name, run as ``Class(conn, peer, server)``;
            a name, loaded now; or a ``Program``, executed with the connection on fd
            0 and 1 and the UCSPI environment.
        settings: all the settings below at once (log, fd, metrics_fd and reload
            excepted).
        max_conns: children at once; at the limit, new clients wait in the backlog.
        backlog: the listen(2) queue length.
        grace: on SIGTERM or SIGINT, how long children may take to finish before
            they are sent SIGTERM (and SIGKILL 3 seconds later).
        banner: bytes sent to each client before the handler or program starts.
        log: where events go; by default one line each on standard error, at
            ``log_level`` (0 quiet, 1 info, 2 debug) in ``log_format`` ("text",
            "json").
        mode: "fork" (a fresh process per connection) or "prefork" (a pool of
            reusable workers, each serving one connection at a time).
        min_spare, max_spare: prefork: idle workers kept ready, at least and at most.
        max_workers: prefork: workers at most, which is also the cap on connections
            served at once (``max_conns`` is fork mode's).
        max_requests: prefork: a worker is replaced after this many connections
            (0: never).
        rules: access rules, as lines of a rules file (``"10.0.0.0/8:deny"``,
            ``"::1:allow,ROLE=admin"``), or a ``RuleSet``; None allows everyone.
        default_policy: "allow" or "deny" when no rule matches; None: deny if any
            rule allows, else allow.
        per_ip: connections at once from one source (an IPv4 address or an IPv6
            prefix); 0 for no limit.
        rate: ``(count, seconds)``: new connections per source per period, or None.
        ipv6_prefix: the length of the IPv6 prefix a source is (default 64).
        reject_message: bytes sent to a client refused by ``per_ip`` or ``rate``.
        idle_timeout: Python handlers: the socket timeout; a read or write waiting
            longer ends the connection with exit 124 (0: none).
        max_lifetime: seconds a connection may last before its process group gets
            SIGTERM (SIGKILL a second later); 0: no limit.
        handshake_timeout: seconds the client has to send its first byte, or the
            child exits 125 (0: no limit); with the PROXY protocol or TLS, the
            deadline for the header and the handshake together (0: 10 s).
        user, group: switch to them after binding, before the first fork.
        rlimits: per-child resource limits by name: ``nofile``, ``as`` (bytes),
            ``cpu`` (seconds), ``nproc``.
        proxy_protocol: ``"v1"``, ``"v2"`` or ``"any"``: each connection starts
            with a PROXY header whose addresses replace the peer's; ``""``: off.
        proxy_from: networks (``"10.0.0.0/8"``) PROXY headers are accepted from;
            connections from elsewhere are refused. Empty: from anyone.
        tls_cert, tls_key: PEM files: serve TLS (the handshake runs in the child).
        tls_client_ca: PEM CA file: require client certificates it signed.
        metrics: ``(host, port)`` or ``"[HOST:]PORT"`` where to serve Prometheus
            metrics (``/metrics``) and a health check (``/healthz``); None for none.
        socket_mode: a Unix socket file's permissions (an int: ``0o660``); None:
            0666 less the umask, as ucspi-unix's unixserver.
        socket_user, socket_group: chown a Unix socket file to them (names or ids).
        fd: serve on this inherited listening socket instead of binding
            ``address`` (socket activation: see ``forkserve.parent.systemd``).
        metrics_fd: serve metrics on this inherited listening socket.
        upgrade_timeout: after SIGUSR2, how long the new server may take to be ready.
        reload: on SIGHUP, returns ``(settings, changed, needs_upgrade)``: the new
            ``Settings`` (a reload applies the reloadable ones: the limits, grace,
            banner, rules, time and resource limits, logging; see config.reload),
            the names of those that changed, and of changes that need a SIGUSR2
            upgrade; or raises ForkserveError to refuse the new configuration.

    Under systemd (``NOTIFY_SOCKET`` set), readiness and status are notified
    (READY, STATUS, STOPPING), and the variable is removed from the environment.

    Raises:
        UsageError: an argument out of range, or an address that does not parse;
            ``HandlerError`` for a handler name that does not load.
        BindError: the address cannot be bound (in use, not local, not permitted).

    Resource handling: owns the listening socket; ``close()`` (or leaving the ``with``
    block) closes it. ``serve_forever()`` installs handlers for SIGCHLD, SIGTERM,
    SIGINT, SIGQUIT and others for its duration, so call it from the main thread. It
    reaps with ``waitpid(-1)``: children the program started by other means are reaped
    too (and logged as unknown at ``-v``).
    """

    def __init__(
        self,
        address: tuple[str, int] | str | None = ("127.0.0.1", 0),
        handler: Handler | Program | str | type[BaseRequestHandler] = echo,
        *,
        settings: Settings | None = None,
        log: Log | None = None,
        fd: int | None = None,
        metrics_fd: int | None = None,
        reload: ReloadSource | None = None,
        **options: Unpack[Options],
    ) -> None:
        settings = Settings(**options) if settings is None else settings.replace(**options)
        check_settings(settings)
        self.settings = settings
        self.log = log if log is not None else Log(settings.log_level, format=settings.log_format)
        self.handler_spec = handler  # what the forker loads again (see parent.forker)
        self.edge_settings = settings  # the PROXY and TLS settings: only an upgrade changes them
        self.forker_off = os.environ.get("FORKSERVE_FORKER") == "0"
        self.edge, self.policy, self.handler, self.service = build_child_side(
            settings, settings, handler, self.log
        )
        from forkserve.parent.privileges import resolve_identity

        self.identity = resolve_identity(settings.user, settings.group)
        self.reload_source = reload
        self.loop: Loop | None = None
        self.handover = take_handover()
        self.open_sockets(address, settings.backlog, fd, settings.metrics, metrics_fd)

    def open_sockets(
        self,
        address: tuple[str, int] | str | None,
        backlog: int,
        fd: int | None,
        metrics: tuple[str, int] | str | None,
        metrics_fd: int | None,
    ) -> None:
        """The listener, the metrics endpoint and the systemd notifier: inherited
        (socket activation, an upgrade) or bound here.

        Resource handling: on any failure, whatever was opened is closed again.
        """
        if fd is None and "LISTEN_FDS" in os.environ:
            from forkserve.parent.systemd import adopt_sockets

            fd, passed_metrics = adopt_sockets(os.environ)
            metrics_fd = passed_metrics if metrics_fd is None else metrics_fd
        self.inherited = fd is not None
        self.listener = self.open_listener(address, fd, backlog)
        if self.listener.unix and isinstance(self.service, ExecService):
            self.service.on_unix_socket()
        self.endpoint: MetricsEndpoint | None = None
        self.notifier: Notifier | None = None
        try:
            if metrics is not None or metrics_fd is not None:
                self.endpoint = bind_metrics(metrics, metrics_fd)
            if os.environ.get("NOTIFY_SOCKET"):
                from forkserve.parent.systemd import Notifier

                self.notifier = Notifier.from_environ(os.environ, self.log)
        except BaseException:
            self.close()
            raise

    def open_listener(
        self, address: tuple[str, int] | str | None, fd: int | None, backlog: int
    ) -> Listener:
        """Adopt ``fd`` (socket activation, an upgrade), or bind ``address``."""
        settings = self.settings
        if fd is not None or is_unix_address(address) or settings.socket_file_options:
            from forkserve.parent.unixlistener import open_unix

            owned = self.handover is not None and self.handover.owned
            return open_unix(address, backlog, settings, fd, owned)
        if address is None:
            raise UsageError("no address to listen on, and no socket passed (LISTEN_FDS)")
        host, port = parse_listen_address(address) if isinstance(address, str) else address
        return Listener.bind(host, port, backlog)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (``("unix:PATH", 0)`` for a Unix socket)."""
        return self.listener.address

    @property
    def port(self) -> int:
        return self.listener.port

    def serve_forever(self, ready: Callable[[Server], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT (graceful) or SIGQUIT (fast); then return.

        Args:
            ready: called once signals are handled and the loop is about to wait:
                the moment to announce readiness (``--print-port`` does).
        """

        def announce() -> None:
            if self.handover is not None:
                self.handover.report_ready()
            if ready is not None:
                ready(self)

        loop = self.make_loop(announce)
        self.attach_operations(loop)
        # Fork and prefork modes' forker, unless the handler cannot be named to a fresh
        # process; before --user: it reads what root may read, then switches.
        if isinstance(loop.model, (ForkModel, Pool)) and (recipe := self.recipe(self.settings)):
            loop.model.start_forker(recipe)
        self.drop_privileges()
        self.log_listen()
        try:
            loop.run()
        finally:
            loop.close()
            self.log.stopping()
        # A socket file is removed at a stop, unless a new master took it over
        # (SIGUSR2) or may still take it (an upgrade under way): it is the new one's.
        if loop.upgrading.current is not None:
            self.listener.disown()
        elif self.listener.remove_file():
            self.log.info("socket-removed", path=self.listener.printable())
        self.log.notice("stopped", pid=os.getpid())

    def make_loop(self, announce: Callable[[], None]) -> Loop:
        """The loop, serving with the chosen process model."""
        settings = self.settings
        loop = Loop(
            self.log,
            self.policy,
            grace=settings.grace,
            ready=announce,
            reloader=self.reload,
            upgrade_timeout=settings.upgrade_timeout,
        )
        if settings.mode == PREFORK:
            loop.use(Pool(loop, self.listener, self.service, PoolPolicy(*settings.pool)))
        elif settings.mode == ASYNC:
            from forkserve.asyncmode.pool import make_async_pool

            loop.use(make_async_pool(loop, self.listener, self.service, settings))
        else:
            loop.use(ForkModel(loop, self.listener, self.service, settings.max_conns))
        return loop

    def recipe(self, settings: Settings) -> bytes | None:
        """What a forker for ``settings`` starts from (see parent.forker.make_recipe):
        the edge stays as started, as in this process."""
        if self.forker_off:
            return None
        from forkserve.parent.forkerstart import make_recipe

        return make_recipe(settings, self.edge_settings, self.handler_spec)

    def attach_operations(self, loop: Loop) -> None:
        """Metrics and systemd, as far as they are asked for."""
        self.loop = loop
        if self.endpoint is not None:
            serve_metrics(loop, self.endpoint, self.settings.mode, self.log)
        if self.notifier is not None:
            from forkserve.parent.systemd import Status

            loop.add_status(Status(self.notifier, upgraded=self.handover is not None))

    def log_listen(self) -> None:
        mode = self.settings.mode
        fields: dict[str, object] = {"address": self.listener.describe(), "mode": mode}
        if self.inherited:
            fields["fd"] = self.listener.fileno()
        if self.handover is not None:
            fields["upgraded_from"] = self.handover.from_pid
        limit = "max_workers" if mode == "prefork" else "max_conns"
        fields[limit] = self.settings.max_workers if mode == "prefork" else self.settings.max_conns
        if mode == ASYNC:
            fields.update(workers=self.settings.workers or os.cpu_count(), loop=self.settings.loop)
        fields["pid"] = os.getpid()
        if isinstance(self.service, ExecService):  # posix_spawn, or fork then exec
            fields["program"] = describe_program(self.service.program.argv)
            fields["start"] = "spawn" if self.service.spawnable else "fork"
        if self.edge is not None:
            fields.update(self.edge.describe())
        self.log.notice("listen", **fields)

    def drop_privileges(self) -> None:
        """--user/--group: after bind, before the first fork; or warn about root."""
        if self.identity is not None:
            from forkserve.parent.privileges import is_current, switch_identity

            if not is_current(self.identity):  # an upgraded master already is
                switch_identity(self.identity)
            self.check_as_user()
        elif os.geteuid() == 0:
            self.log.warning(
                "running-as-root",
                hint="--user NAME drops privileges after bind (--user root: as root)",
            )

    def check_as_user(self) -> None:
        """What start-up checked as root must hold as --user/--group too: the program
        runs (else ProgramError, exit 100, before the first connection fails with
        111), and the TLS files SIGHUP reads again are readable (else a warning: the
        running context serves on, but a reload would fail)."""
        from forkserve.parent.privileges import describe_identity, unreadable

        assert self.identity is not None
        who = describe_identity(self.identity)
        if isinstance(self.handler, Program):
            self.handler.check_runnable(who)
        if self.edge is not None and self.edge.tls is not None:
            tls = self.edge.tls
            files = unreadable([tls.cert, tls.key, *filter(None, [tls.client_ca])])
            if files:
                self.log.warning("reload-unreadable", files=",".join(files), user=who)

    def reload(self) -> None:
        """SIGHUP: take the new configuration, or refuse it (see config.reload)."""
        from forkserve.config.reload import reload

        reload(self)

    def take_settings(self, settings: Settings, policy: Policy) -> None:
        """A reload's checked settings and the policy built from them, now in force."""
        self.settings = settings
        self.policy = policy

    def reload_tls(self) -> bool:
        """SIGHUP: load the certificate and key again; keep the old ones if that fails."""
        from forkserve._errors import TLSConfigError

        assert self.edge is not None and self.edge.tls is not None
        try:
            self.edge.tls.reload()
        except TLSConfigError as exc:
            self.log.warning("reload-failed", what="tls", error=str(exc))
            return False
        self.log.notice("reload", what="tls", cert=self.edge.tls.cert)
        return True

    def close(self) -> None:
        """Close the sockets; a Unix socket's file goes too (a start that failed after
        binding), unless a new master took it over (see serve_forever) or it is
        systemd's."""
        self.listener.close()
        self.listener.remove_file()
        if self.endpoint is not None:
            self.endpoint.close()
        if self.notifier is not None:
            self.notifier.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
