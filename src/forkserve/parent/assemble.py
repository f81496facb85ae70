"""What ``Server`` is built from: checked arguments, the service children run, the
admission gate, the metrics endpoint, and what an upgrading master handed over.

Each builder checks its inputs and raises UsageError (exit 100) with the reason, so
the constructor and a SIGHUP reload (see config.reload) refuse the same mistakes.
"""

from __future__ import annotations

import os

from forkserve._errors import UsageError
from forkserve._log import DEBUG, FORMATS, INFO, QUIET, Log
from forkserve.child.exec import ExecService, Program
from forkserve.child.handler import Handler, PythonService, Service, is_coroutine_function
from forkserve.child.prelude import Prelude
from forkserve.child.requesthandler import handler_for
from forkserve.core.address import parse_listen_address
from forkserve.core.gate import MAX_SECONDS, MAX_SECONDS_TEXT, Gate, Policy
from forkserve.core.names import ASYNC, MODES, RLIMIT_NAMES
from forkserve.core.rules import RuleSet
from forkserve.parent.listeners import Listener

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from socketserver import BaseRequestHandler

    from forkserve.child.edge import Edge
    from forkserve.config.values import Settings
    from forkserve.parent.endpoint import MetricsEndpoint
    from forkserve.parent.loop import Loop
    from forkserve.parent.upgrade import Handover

# The metrics endpoint's listen queue: scrapers are few.
ENDPOINT_BACKLOG = 16


def check_settings(settings: Settings) -> None:
    """Raises UsageError for a mode, a limit, a pool, a backlog or a stop or upgrade
    time out of range, a banner that is not bytes, or an unknown log format or
    level (the rest is checked as it is built: see make_policy and
    make_settings_prelude)."""
    check_arguments(settings.mode, settings.max_conns, settings.pool, settings.workers)
    check_loop(settings.loop)
    if settings.backlog < 1:
        raise UsageError(f"backlog must be at least 1, not {settings.backlog}")
    check_seconds("grace", settings.grace)
    check_seconds("upgrade_timeout", settings.upgrade_timeout)
    if not isinstance(settings.banner, bytes):
        raise UsageError(f"banner must be bytes, not {type(settings.banner).__name__}")
    if settings.log_format not in FORMATS:
        raise UsageError(f"log_format must be one of {', '.join(FORMATS)}")
    if settings.log_level not in (QUIET, INFO, DEBUG):
        raise UsageError(f"log_level must be {QUIET}, {INFO} or {DEBUG}")


def check_arguments(
    mode: str, max_conns: int, pool: tuple[int, int, int, int], workers: int = 0
) -> None:
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
    if workers < 0:
        raise UsageError(f"workers must be 0 (the number of CPUs) or more, not {workers}")


def check_loop(loop: str) -> None:
    """Raises UsageError for an unknown event loop, or uvloop asked for and missing."""
    if loop not in ("auto", "uvloop", "asyncio"):
        raise UsageError(f"loop must be auto, uvloop or asyncio, not {loop!r}")
    if loop == "uvloop":
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            raise UsageError("--loop uvloop: uvloop is not installed (pip install uvloop)")


def take_handover() -> Handover | None:
    """When started by an upgrading master: what it handed over (see parent.upgrade)."""
    if "FORKSERVE_UPGRADE_FROM" not in os.environ:
        return None
    from forkserve.parent.upgrade import Handover

    return Handover.from_environ(os.environ)


def bind_metrics(address: tuple[str, int] | str | None, fd: int | None) -> MetricsEndpoint:
    """Bind the metrics endpoint, or adopt ``fd`` (imported only when asked for).

    Raises:
        AddressError: the address does not parse or resolve.
        BindError: the address cannot be bound.
    """
    from forkserve.parent.endpoint import MetricsEndpoint

    if fd is not None:
        return MetricsEndpoint(Listener.from_fd(fd))
    assert address is not None
    host, port = parse_listen_address(address) if isinstance(address, str) else address
    return MetricsEndpoint(Listener.bind(host, port, ENDPOINT_BACKLOG))


def serve_metrics(loop: Loop, endpoint: MetricsEndpoint, mode: str, log: Log) -> None:
    """Give ``loop`` the counters and the endpoint that serves them."""
    from forkserve.core.metrics import Metrics, answer, rejection_reasons

    metrics = Metrics(mode)
    loop.add_metrics(metrics, endpoint)

    def render() -> bytes:
        # The gate in force now: a reload may have added a limit, whose reason then
        # shows at 0 from this scrape on.
        gate = loop.admission.policy.gate
        reasons = rejection_reasons(
            gate.rules is not None, bool(gate.per_ip), gate.buckets is not None
        )
        metrics.expect_rejections(reasons)
        return metrics.render(loop.gauges())

    endpoint.serve(lambda data: answer(data, render, loop.health), log)
    log.notice("metrics", address=endpoint.describe(), paths="/metrics,/healthz")


def build_child_side(
    settings: Settings,
    edge_settings: Settings,
    handler: Handler | Program | str | type[BaseRequestHandler],
    log: Log,
) -> tuple[Edge | None, Policy, Handler | Program, Service]:
    """What a connection's process runs, built from ``settings`` (the edge, whose
    PROXY and TLS settings only an upgrade changes, from ``edge_settings``): the
    supervisor builds it so at start-up, the forker (forker.process) from the same
    values, so both hold the same service.

    Raises:
        ForkserveError: a setting, the TLS files or the handler did not load.
    """
    from forkserve.child.edge import make_edge

    edge = make_edge(
        log,
        proxy_protocol=edge_settings.proxy_protocol,
        proxy_from=tuple(edge_settings.proxy_from),
        tls_cert=edge_settings.tls_cert,
        tls_key=edge_settings.tls_key,
        tls_client_ca=edge_settings.tls_client_ca,
        handshake_timeout=edge_settings.handshake_timeout,
    )
    policy = make_policy(settings, edge)
    prelude = make_settings_prelude(settings, log, edge)
    handler, service = make_service(handler, prelude, log, settings.mode, edge)
    return edge, policy, handler, service


def make_service(
    handler: Handler | Program | str | type[BaseRequestHandler],
    prelude: Prelude,
    log: Log,
    mode: str,
    edge: Edge | None = None,
) -> tuple[Handler | Program, Service]:
    """Load a handler name, and wrap the handler or program as what children run.

    A socketserver request handler class (by name or not) is wrapped in a
    ``RequestHandler`` here, once.

    Raises:
        HandlerError: a handler name that does not load, or a class that is no handler.
        UsageError: an async handler outside async mode, or a sync one in it; a
            program in prefork or async mode: exec replaces the process, so a
            worker could serve only one connection; fork mode is exec's model. Or
            an idle timeout for a program, which owns its socket.
    """
    if isinstance(handler, str):
        from forkserve.config.handler import load_handler

        handler = load_handler(handler)
    if mode == ASYNC and not isinstance(handler, Program):
        from forkserve.asyncmode.service import AsyncService, as_async_handler

        service = AsyncService(as_async_handler(handler), prelude, edge, log)
        return handler, service  # type: ignore[return-value] # a class was refused
    if is_coroutine_function(handler):
        name = getattr(handler, "__qualname__", type(handler).__name__)
        raise UsageError(f"handler {name} is an async def: it needs --mode async")
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
    # Server(address, SimpleHTTPRequestHandler), or a partial of it: decided here, once.
    handler = handler_for(handler, getattr(handler, "__name__", repr(handler)))
    return handler, PythonService(handler, prelude, edge)


def check_seconds(name: str, value: float) -> None:
    """Raises UsageError unless ``value`` is 0 (off) or a positive number of seconds,
    MAX_SECONDS at most (poll(2) waits no longer: see core.gate)."""
    if not 0 <= value < float("inf"):
        raise UsageError(f"{name} must be 0 (off) or more seconds, not {value}")
    if value > MAX_SECONDS:
        raise UsageError(f"{name} must be at most {MAX_SECONDS_TEXT}, not {value}")


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
        from forkserve.parent.privileges import rlimit_triples

        triples = rlimit_triples(rlimits, reusable=mode == "prefork")
    return Prelude(
        banner,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        rlimits=triples,
        log=log,
    )


def make_settings_prelude(settings: Settings, log: Log, edge: Edge | None) -> Prelude:
    """The prelude ``settings`` ask for (see make_prelude), checked."""
    return make_prelude(
        settings.banner,
        log,
        mode=settings.mode,
        idle_timeout=settings.idle_timeout,
        # With an edge, the deadline is the header's and the handshake's: waiting
        # for readability on the raw socket would miss bytes TLS already holds.
        handshake_timeout=0.0 if edge is not None else settings.handshake_timeout,
        rlimits=settings.rlimits or {},
    )


def make_policy(settings: Settings, edge: Edge | None) -> Policy:
    """The admission policy ``settings`` ask for: the gate, the reject message and
    the lifetime limit, checked.

    Raises:
        UsageError: a bad rule, policy, limit or lifetime.
    """
    gate = make_gate(
        settings.rules,
        settings.default_policy,
        settings.per_ip,
        settings.rate,
        settings.ipv6_prefix,
    )
    check_seconds("max_lifetime", settings.max_lifetime)
    proxied = edge is not None and bool(edge.proxy)
    if settings.mode != "fork" or proxied:
        # Each connection's peer is parsed (core.rules) where it is admitted: in the
        # prefork and async workers, and behind PROXY in the forker's children. Loaded
        # once here, before they are forked, not in each at its first connection.
        import ipaddress  # noqa: F401
    return Policy(gate, settings.reject_message, settings.max_lifetime, proxy=proxied)


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
    from forkserve.core.rules import RuleError, default_allows, parse_rules

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
