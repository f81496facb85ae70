"""SIGHUP for ``Server``: take a new configuration, or refuse it and keep the old one.

Imported at the first SIGHUP, not before: a server that is never reloaded never
carries this code into its children.
"""

from __future__ import annotations

from forkserve._errors import ForkserveError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Mapping

    from forkserve._server import Server
    from forkserve.child.handler import Service
    from forkserve.parent.admission import Policy


def reload(server: Server) -> None:
    """Re-read the configuration and apply it to new connections.

    Live connections keep what they were started with: each child has its own copy
    of the settings, and prefork workers are replaced, never changed in place.

    Error handling: a configuration that fails any check (the file, a rule, a
    limit, a resource limit above the server's own) is logged as ``reload-failed``
    and nothing changes.
    """
    loop = server.loop
    assert loop is not None
    if server.reload_source is None:
        server.log.notice("reload", changed="none", reason="no configuration to re-read")
        return
    try:
        new, changed, upgrade = server.reload_source()
        policy, service = rebuild(server, new)
    except ForkserveError as exc:
        server.log.warning("reload-failed", error=str(exc), kept="the running configuration")
        loop.metrics.operation("reload-failed")
        return
    reloaded = set(changed)
    # The TLS files, read again (a renewed certificate), before apply() forks the
    # replacement workers; a bad one is logged and the old one stays.
    tls = server.edge is not None and server.edge.tls is not None
    if tls and server.reload_tls():
        reloaded.add("tls")  # what a prefork worker holds: it is replaced
    apply(server, new, policy, service, frozenset(reloaded))
    fields: dict[str, object] = {"changed": ",".join(changed) or "none"}
    if upgrade:
        fields["needs_upgrade"] = ",".join(upgrade)
    server.log.notice("reload", **fields)
    loop.metrics.operation("reload-ok")


def rebuild(server: Server, new: Mapping[str, object]) -> tuple[Policy, Service]:
    """The admission policy and the service the new settings ask for, checked.

    Raises:
        UsageError: a limit, rule, timeout or resource limit out of range.
    """
    from forkserve._server import POOL_NAMES
    from forkserve.parent.admission import Policy
    from forkserve.parent.assemble import check_arguments, make_gate, make_prelude, make_service

    limit = new.get("max_conns", server.max_conns)
    pool = tuple(new.get(name, 1) for name in POOL_NAMES)
    check_arguments(server.mode, limit, pool)  # type: ignore[arg-type]
    gate = make_gate(
        new["rules"],  # type: ignore[arg-type]
        None,  # the RuleSet carries the default policy
        new["per_ip"],  # type: ignore[arg-type]
        new["rate"],  # type: ignore[arg-type]
        server.policy.gate.ipv6_prefix,
    )
    policy = Policy(
        gate,
        new["reject_message"],  # type: ignore[arg-type]
        server.policy.max_lifetime,
        proxy=server.policy.proxy,
    )
    prelude = make_prelude(
        new["banner"],  # type: ignore[arg-type]
        server.log,
        mode=server.mode,
        idle_timeout=new["idle_timeout"],  # type: ignore[arg-type]
        # With PROXY or TLS the edge keeps its own deadline (set at start-up).
        handshake_timeout=0.0 if server.edge is not None else new["handshake_timeout"],  # type: ignore[arg-type]
        rlimits=new["rlimits"],  # type: ignore[arg-type]
    )
    _, service = make_service(server.handler, prelude, server.log, server.mode, server.edge)
    return policy, service


class ReloadPlan:
    """What a reload changes, handed to the loop in one call (``Loop.apply_reload``).

    A minimal adapter until the typed settings land (see issue 13): the names are
    the interface the loop reads.
    """

    __slots__ = (
        "changed",
        "grace",
        "log_format",
        "log_level",
        "max_conns",
        "policy",
        "pool",
        "service",
        "upgrade_timeout",
    )

    def __init__(
        self, new: Mapping[str, object], policy: Policy, service: Service, changed: frozenset[str]
    ) -> None:
        from forkserve.prefork.policy import POOL_SETTINGS

        level, log_format, grace = (new[k] for k in ("log_level", "log_format", "grace"))
        assert isinstance(level, int) and isinstance(grace, float)
        self.changed = changed
        self.grace = grace
        self.upgrade_timeout = float(new["upgrade_timeout"])  # type: ignore[arg-type]
        self.policy = policy
        self.service = service
        pool = {name: new[name] for name in POOL_SETTINGS if name in new}
        self.pool: dict[str, int] | None = pool or None  # type: ignore[assignment]
        limit = new.get("max_conns")
        self.max_conns = limit if isinstance(limit, int) else None
        self.log_format = str(log_format)
        self.log_level = level


def apply(
    server: Server,
    new: Mapping[str, object],
    policy: Policy,
    service: Service,
    changed: frozenset[str],
) -> None:
    """Apply checked settings: the server keeps its copies, the loop takes a plan.

    ``changed`` names what differs from the running configuration (setting keys,
    and ``tls`` when the certificate was read again): the loop replaces prefork
    workers only when something they hold is in it.
    """
    loop = server.loop
    assert loop is not None
    plan = ReloadPlan(new, policy, service, changed)
    server.grace = plan.grace
    loop.apply_reload(plan)
    server.policy = policy
