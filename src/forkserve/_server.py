"""The public Python API: ``forkserve.Server``."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType

from forkserve._address import parse_listen_address
from forkserve._errors import UsageError
from forkserve._exec import ExecService, Program
from forkserve._exec import describe as describe_program
from forkserve._handler import Handler, PythonService, Service, echo
from forkserve._limits import DEFAULT_IPV6_PREFIX, Gate
from forkserve._listen import DEFAULT_BACKLOG, Listener
from forkserve._log import Log
from forkserve._loop import ForkLoop
from forkserve._prefork import PreforkLoop
from forkserve._prelude import RLIMIT_NAMES, Prelude
from forkserve._rules import RuleSet
from forkserve._supervise import Policy, Supervisor

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from forkserve._edge import Edge

# The process models `forkserve serve --mode` offers; the benchmark suite runs each.
MODES = ("fork", "prefork")
DEFAULT_MAX_CONNS = 1000
DEFAULT_GRACE = 10.0
# Prefork pool defaults: a couple of spare workers keep the first connections of a
# burst from waiting for a fork; 64 workers of a few MiB each fit a small machine.
DEFAULT_MIN_SPARE = 2
DEFAULT_MAX_SPARE = 8
DEFAULT_MAX_WORKERS = 64


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
        address: tuple[str, int] | str = ("127.0.0.1", 0),
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
        rules: Sequence[str] | RuleSet | None = None,
        default_policy: str | None = None,
        per_ip: int = 0,
        rate: tuple[int, float] | None = None,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        reject_message: bytes = b"",
        idle_timeout: float = 0.0,
        max_lifetime: float = 0.0,
        handshake_timeout: float = 0.0,
        user: str | None = None,
        group: str | None = None,
        rlimits: Mapping[str, int] | None = None,
        proxy_protocol: str = "",
        proxy_from: tuple[str, ...] = (),
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ) -> None:
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
        self.mode = mode
        self.pool = (min_spare, max_spare, max_workers, max_requests)
        if backlog < 1:
            raise UsageError(f"backlog must be at least 1, not {backlog}")
        if not grace >= 0:
            raise UsageError(f"grace must be 0 or more seconds, not {grace}")
        if not isinstance(banner, bytes):
            raise UsageError(f"banner must be bytes, not {type(banner).__name__}")
        host, port = parse_listen_address(address) if isinstance(address, str) else address
        self.max_conns = max_conns
        self.grace = grace
        self.log = log if log is not None else Log()
        from forkserve._edge import make_edge

        self.edge = make_edge(
            self.log,
            proxy_protocol=proxy_protocol,
            proxy_from=tuple(proxy_from),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            handshake_timeout=handshake_timeout,
        )
        gate = make_gate(rules, default_policy, per_ip, rate, ipv6_prefix)
        check_seconds("max_lifetime", max_lifetime)
        self.policy = Policy(gate, reject_message, max_lifetime)
        prelude = make_prelude(
            banner,
            self.log,
            mode=mode,
            idle_timeout=idle_timeout,
            # With an edge, the deadline is the header's and the handshake's: waiting
            # for readability on the raw socket would miss bytes TLS already holds.
            handshake_timeout=0.0 if self.edge is not None else handshake_timeout,
            rlimits=rlimits or {},
        )
        self.handler, self.service = make_service(handler, prelude, self.log, mode, self.edge)
        from forkserve._privileges import resolve_identity

        self.identity = resolve_identity(user, group)
        self.listener = Listener.bind(host, port, backlog)

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
        announce = None if ready is None else (lambda: ready(self))
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
                policy=self.policy,
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
                policy=self.policy,
            )
        fields: dict[str, object] = {"address": self.listener.describe(), "mode": self.mode}
        fields.update(limit, pid=os.getpid())
        if isinstance(self.handler, Program):
            fields["program"] = describe_program(self.handler.argv)
        if self.edge is not None:
            fields.update(self.edge.describe())
            if self.edge.tls is not None:
                loop.reload_hook = self.reload_tls
        self.log.notice("listen", **fields)
        if self.identity is not None:
            from forkserve._privileges import switch_identity

            switch_identity(self.identity)  # after bind, before the first fork
        elif os.geteuid() == 0:
            self.log.warning(
                "running-as-root",
                hint="--user NAME drops privileges after bind (--user root: as root)",
            )
        try:
            loop.run()
        finally:
            loop.close()
        self.log.notice("stopped", pid=os.getpid())

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
        self.listener.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def make_service(
    handler: Handler | Program | str,
    prelude: Prelude,
    log: Log,
    mode: str,
    edge: Edge | None = None,
) -> tuple[Handler | Program, Service]:
    """Load a handler name, and wrap the handler or program as what children run.

    Raises:
        HandlerError: a handler name that does not load.
        UsageError: a program in prefork mode: exec replaces the process, so a
            worker could serve only one connection; fork mode is exec's model. Or
            an idle timeout for a program, which owns its socket.
    """
    if isinstance(handler, str):
        from forkserve._load import load_handler

        handler = load_handler(handler)
    if isinstance(handler, Program):
        if mode != "fork":
            raise UsageError(
                "a program replaces the process that runs it: exec mode needs --mode fork"
            )
        if prelude.idle_timeout:
            raise UsageError(
                "--idle-timeout applies to Python handlers: a program owns its socket "
                "(use --max-lifetime)"
            )
        return handler, ExecService(handler, log, prelude, edge)
    return handler, PythonService(handler, prelude, edge)


def check_seconds(name: str, value: float) -> None:
    """Raises UsageError unless ``value`` is 0 (off) or a finite positive number."""
    if not 0 <= value < float("inf"):
        raise UsageError(f"{name} must be 0 (off) or more seconds, not {value}")


def make_prelude(
    banner: bytes,
    log: Log,
    *,
    mode: str,
    idle_timeout: float,
    handshake_timeout: float,
    rlimits: Mapping[str, int],
) -> Prelude:
    """What each child runs before its handler or program, checked.

    Raises:
        UsageError: a bad timeout or resource limit.
    """
    for name, value in (("idle_timeout", idle_timeout), ("handshake_timeout", handshake_timeout)):
        check_seconds(name, value)
    triples: tuple[tuple[int, int, int], ...] = ()
    if rlimits:
        for name, value in rlimits.items():
            if name not in RLIMIT_NAMES or not isinstance(value, int) or value < 1:
                raise UsageError(f"rlimits: expected {', '.join(RLIMIT_NAMES)} above 0")
        from forkserve._privileges import rlimit_triples

        triples = rlimit_triples(rlimits, reusable=mode == "prefork")
    return Prelude(
        banner,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        rlimits=triples,
        log=log,
    )


def make_gate(
    rules: Sequence[str] | RuleSet | None,
    default_policy: str | None,
    per_ip: int,
    rate: tuple[int, float] | None,
    ipv6_prefix: int,
) -> Gate:
    """The parent's admission policy, checked.

    Raises:
        UsageError: a bad rule, policy or limit.
    """
    from forkserve._rules import RuleError, default_allows, parse_rules

    if default_policy not in (None, "allow", "deny"):
        raise UsageError(f"default_policy must be 'allow' or 'deny', not {default_policy!r}")
    if rules is not None and not isinstance(rules, RuleSet):
        if isinstance(rules, str):
            raise UsageError("rules must be a list of rule lines, not one string")
        try:
            parsed = parse_rules("\n".join(rules).encode(), "rules")
        except RuleError as exc:
            raise UsageError(f"rules line {exc.line}: {exc.reason}") from None
        rules = RuleSet(parsed, default_allows(parsed, default_policy))
    if per_ip < 0:
        raise UsageError(f"per_ip must be 0 (no limit) or more, not {per_ip}")
    if rate is not None and not (rate[0] >= 1 and 0 < rate[1] < float("inf")):
        raise UsageError(f"rate must be (count, seconds) above 0, not {rate!r}")
    if not 0 <= ipv6_prefix <= 128:
        raise UsageError(f"ipv6_prefix must be 0 to 128, not {ipv6_prefix}")
    return Gate(rules, per_ip, rate, ipv6_prefix)
