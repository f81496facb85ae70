"""The public Python API: ``forkserve.Server``."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType

from forkserve._address import parse_listen_address
from forkserve._errors import ForkserveError, UsageError
from forkserve._exec import ExecService, Program
from forkserve._exec import describe as describe_program
from forkserve._handler import Handler, PythonService, Service, echo
from forkserve._listen import DEFAULT_BACKLOG, Listener
from forkserve._log import Log
from forkserve._loop import ForkLoop
from forkserve._operate import DEFAULT_UPGRADE_TIMEOUT
from forkserve._prefork import PreforkLoop
from forkserve._supervise import Supervisor

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Mapping

    from forkserve._endpoint import MetricsEndpoint
    from forkserve._systemd import Notifier
    from forkserve._upgrade import Handover

# The process models `forkserve serve --mode` offers; the benchmark suite runs each.
MODES = ("fork", "prefork")
DEFAULT_MAX_CONNS = 1000
DEFAULT_GRACE = 10.0
# Prefork pool defaults: a couple of spare workers keep the first connections of a
# burst from waiting for a fork; 64 workers of a few MiB each fit a small machine.
DEFAULT_MIN_SPARE = 2
DEFAULT_MAX_SPARE = 8
DEFAULT_MAX_WORKERS = 64
POOL_NAMES = ("min_spare", "max_spare", "max_workers", "max_requests")
# The metrics endpoint's listen queue: scrapers are few.
ENDPOINT_BACKLOG = 16


class Server:
    """A TCP server that forks one process per connection and runs ``handler`` in it.

    ``handler`` is a Python callable, the name of one (``"pkg.module:function"``,
    ``"path/file.py:function"`` or a built-in: ``"echo"``, ``"discard"``,
    ``"daytime"``, ``"chargen"``), or a ``forkserve.Program`` to exec (exec mode).

    Binds when constructed, so ``address`` is known (port 0 picks a free port) and a
    bind failure raises here, before anything else starts.

    Args:
        address: ``(host, port)`` or ``"[HOST:]PORT"`` text (``"[::1]:9000"``).
        handler: called as ``handler(conn, peer)`` in the child (see ``Handler``); a
            name, loaded now; or a ``Program``, executed with the connection on fd
            0 and 1 and the UCSPI environment.
        max_conns: children at once; at the limit, new clients wait in the backlog.
        backlog: the listen(2) queue length.
        grace: on SIGTERM or SIGINT, how long children may take to finish before
            they are sent SIGTERM (and SIGKILL 3 seconds later).
        banner: bytes sent to each client before the handler or program starts.
        log: where events go; by default one line each on standard error.
        mode: "fork" (a fresh process per connection) or "prefork" (a pool of
            reusable workers, each serving one connection at a time).
        min_spare, max_spare: prefork: idle workers kept ready, at least and at most.
        max_workers: prefork: workers at most, which is also the cap on connections
            served at once (``max_conns`` is fork mode's).
        max_requests: prefork: a worker is replaced after this many connections
            (0: never).
        metrics: ``(host, port)`` or ``"[HOST:]PORT"`` where to serve Prometheus
            metrics (``/metrics``) and a health check (``/healthz``); None for none.
        fd: serve on this inherited listening socket instead of binding
            ``address`` (socket activation: see ``forkserve._systemd``).
        metrics_fd: serve metrics on this inherited listening socket.
        upgrade_timeout: after SIGUSR2, how long the new server may take to be ready.
        reload: on SIGHUP, returns ``(settings, changed, needs_upgrade)``: the
            reloadable settings to apply (``max_conns`` or the pool's four,
            ``grace``, ``banner``, ``log_level``, ``log_format``), the names of
            those that changed, and of changes that need a SIGUSR2 upgrade; or
            raises ForkserveError to refuse the new configuration.

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
        handler: Handler | Program | str = echo,
        *,
        max_conns: int = DEFAULT_MAX_CONNS,
        backlog: int = DEFAULT_BACKLOG,
        grace: float = DEFAULT_GRACE,
        banner: bytes = b"",
        log: Log | None = None,
        mode: str = "fork",
        min_spare: int = DEFAULT_MIN_SPARE,
        max_spare: int = DEFAULT_MAX_SPARE,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_requests: int = 0,
        metrics: tuple[str, int] | str | None = None,
        fd: int | None = None,
        metrics_fd: int | None = None,
        reload: Callable[[], tuple[dict[str, object], list[str], list[str]]] | None = None,
        upgrade_timeout: float = DEFAULT_UPGRADE_TIMEOUT,
    ) -> None:
        check_arguments(mode, max_conns, (min_spare, max_spare, max_workers, max_requests))
        if backlog < 1:
            raise UsageError(f"backlog must be at least 1, not {backlog}")
        if not grace >= 0:
            raise UsageError(f"grace must be 0 or more seconds, not {grace}")
        if not isinstance(banner, bytes):
            raise UsageError(f"banner must be bytes, not {type(banner).__name__}")
        self.mode = mode
        self.pool = (min_spare, max_spare, max_workers, max_requests)
        self.max_conns = max_conns
        self.grace = grace
        self.log = log if log is not None else Log()
        self.handler, self.service = make_service(handler, banner, self.log, mode)
        self.reload_source = reload
        self.upgrade_timeout = upgrade_timeout
        self.loop: Supervisor | None = None
        self.handover = take_handover()
        if fd is None and "LISTEN_FDS" in os.environ:
            from forkserve._systemd import adopt_sockets

            fd, passed_metrics = adopt_sockets(os.environ)
            metrics_fd = passed_metrics if metrics_fd is None else metrics_fd
        self.inherited = fd is not None
        self.listener = self.open_listener(address, fd, backlog)
        self.endpoint: MetricsEndpoint | None = None
        self.notifier: Notifier | None = None
        try:
            if metrics is not None or metrics_fd is not None:
                self.endpoint = bind_metrics(metrics, metrics_fd)
            if os.environ.get("NOTIFY_SOCKET"):
                from forkserve._systemd import Notifier

                self.notifier = Notifier.from_environ(os.environ, self.log)
        except BaseException:
            self.close()
            raise

    def open_listener(
        self, address: tuple[str, int] | str | None, fd: int | None, backlog: int
    ) -> Listener:
        """Adopt ``fd`` (socket activation, an upgrade), or bind ``address``."""
        if fd is not None:
            owned = self.handover is not None and self.handover.owned
            return Listener.from_fd(fd, owned=owned)
        if address is None:
            raise UsageError("no address to listen on, and no socket passed (LISTEN_FDS)")
        host, port = parse_listen_address(address) if isinstance(address, str) else address
        return Listener.bind(host, port, backlog)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
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

        min_spare, max_spare, max_workers, max_requests = self.pool
        loop: Supervisor
        if self.mode == "prefork":
            limit: dict[str, object] = {"max_workers": max_workers}
            loop = PreforkLoop(
                self.listener,
                self.service,
                self.log,
                min_spare=min_spare,
                max_spare=max_spare,
                max_workers=max_workers,
                max_requests=max_requests,
                grace=self.grace,
                ready=announce,
            )
        else:
            limit = {"max_conns": self.max_conns}
            loop = ForkLoop(
                self.listener,
                self.service,
                self.log,
                max_conns=self.max_conns,
                grace=self.grace,
                ready=announce,
            )
        self.loop = loop
        loop.reloader = self.reload
        loop.upgrade_timeout = self.upgrade_timeout
        if self.endpoint is not None:
            serve_metrics(loop, self.endpoint, self.mode, self.log)
        if self.notifier is not None:
            from forkserve._systemd import Status

            loop.status = Status(self.notifier, upgraded=self.handover is not None)
        fields: dict[str, object] = {"address": self.listener.describe(), "mode": self.mode}
        if self.inherited:
            fields["fd"] = self.listener.fileno()
        if self.handover is not None:
            fields["upgraded_from"] = self.handover.from_pid
        fields.update(limit, pid=os.getpid())
        if isinstance(self.handler, Program):
            fields["program"] = describe_program(self.handler.argv)
        self.log.notice("listen", **fields)
        try:
            loop.run()
        finally:
            loop.close()
        self.log.notice("stopped", pid=os.getpid())

    def reload(self) -> None:
        """SIGHUP: take the new configuration, or refuse it and keep the old one.

        New settings apply to new connections; live connections keep what they were
        started with (a child has its own copy). Error handling: an invalid
        configuration is logged (``reload-failed``) and changes nothing.
        """
        loop = self.loop
        assert loop is not None
        if self.reload_source is None:
            self.log.notice("reload", changed="none", reason="no configuration to re-read")
            return
        try:
            new, changed, upgrade = self.reload_source()
            limit = new.get("max_conns", self.max_conns)
            pool = tuple(new.get(name, 1) for name in POOL_NAMES)
            check_arguments(self.mode, limit, pool)  # type: ignore[arg-type]
        except ForkserveError as exc:
            self.log.warning("reload-failed", error=str(exc), kept="the running configuration")
            loop.metrics.operation("reload-failed")
            return
        self.apply(new)
        fields: dict[str, object] = {"changed": ",".join(changed) or "none"}
        if upgrade:
            fields["needs_upgrade"] = ",".join(upgrade)
        self.log.notice("reload", **fields)
        loop.metrics.operation("reload-ok")

    def apply(self, new: Mapping[str, object]) -> None:
        """Apply reloaded settings to the log, the service and the loop."""
        assert self.loop is not None
        level, log_format, grace, banner = (
            new[k] for k in ("log_level", "log_format", "grace", "banner")
        )
        assert isinstance(level, int) and isinstance(grace, float) and isinstance(banner, bytes)
        self.log.level = level
        self.log.set_format(str(log_format))
        self.grace = self.loop.grace = grace
        self.loop.upgrade_timeout = float(new["upgrade_timeout"])  # type: ignore[arg-type]
        self.handler, self.loop.service = make_service(self.handler, banner, self.log, self.mode)
        self.loop.reconfigure(new)

    def close(self) -> None:
        self.listener.close()
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


def check_arguments(mode: str, max_conns: int, pool: tuple[int, int, int, int]) -> None:
    """Raises UsageError for a mode, a limit or a pool out of range."""
    min_spare, max_spare, max_workers, max_requests = pool
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if max_conns < 1:
        raise UsageError(f"max_conns must be at least 1, not {max_conns}")
    if not 1 <= min_spare <= max_spare <= max_workers:
        raise UsageError(
            "the pool needs 1 <= min_spare <= max_spare <= max_workers, "
            f"not {min_spare}, {max_spare}, {max_workers}"
        )
    if max_requests < 0:
        raise UsageError(f"max_requests must be 0 (no limit) or more, not {max_requests}")


def take_handover() -> Handover | None:
    """When started by an upgrading master: what it handed over (see _upgrade)."""
    if "FORKSERVE_UPGRADE_FROM" not in os.environ:
        return None
    from forkserve._upgrade import Handover

    return Handover.from_environ(os.environ)


def bind_metrics(address: tuple[str, int] | str | None, fd: int | None) -> MetricsEndpoint:
    """Bind the metrics endpoint, or adopt ``fd`` (imported only when asked for).

    Raises:
        AddressError: the address does not parse or resolve.
        BindError: the address cannot be bound.
    """
    from forkserve._endpoint import MetricsEndpoint

    if fd is not None:
        return MetricsEndpoint(Listener.from_fd(fd))
    assert address is not None
    host, port = parse_listen_address(address) if isinstance(address, str) else address
    return MetricsEndpoint(Listener.bind(host, port, ENDPOINT_BACKLOG))


def serve_metrics(loop: Supervisor, endpoint: MetricsEndpoint, mode: str, log: Log) -> None:
    """Give ``loop`` the counters and the endpoint that serves them."""
    from forkserve._metrics import Metrics, answer

    metrics = Metrics(mode)
    loop.metrics = metrics
    loop.endpoint = endpoint
    endpoint.respond = lambda data: answer(data, lambda: metrics.render(loop.gauges()), loop.health)
    log.notice("metrics", address=endpoint.describe(), paths="/metrics,/healthz")


def make_service(
    handler: Handler | Program | str, banner: bytes, log: Log, mode: str
) -> tuple[Handler | Program, Service]:
    """Load a handler name, and wrap the handler or program as what children run.

    Raises:
        HandlerError: a handler name that does not load.
        UsageError: a program in prefork mode: exec replaces the process, so a
            worker could serve only one connection; fork mode is exec's model.
    """
    if isinstance(handler, str):
        from forkserve._load import load_handler

        handler = load_handler(handler)
    if isinstance(handler, Program):
        if mode != "fork":
            raise UsageError(
                "a program replaces the process that runs it: exec mode needs --mode fork"
            )
        return handler, ExecService(handler, log, banner)
    return handler, PythonService(handler, banner, log)
