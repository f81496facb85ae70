"""SIGHUP for ``Server``: take a new configuration, or refuse it and keep the old one.

A reload builds a ``ReloadPlan`` from the new settings (every check passed) and hands
it to the loop in one call, ``loop.apply_reload(plan)``: nothing here writes the
loop's fields.

Imported at the first SIGHUP, not before: a server that is never reloaded never
carries this code into its children.
"""

from __future__ import annotations

from forkserve._errors import ForkserveError
from forkserve.child.exec import ExecService

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from forkserve._server import Server
    from forkserve.child.handler import Service
    from forkserve.config.values import Settings
    from forkserve.core.gate import Policy


class ReloadPlan:
    """What a reload changes in the running loop, checked and built.

    Attributes:
        changed: the setting keys that differ from the running configuration
            (``max-conns``), and ``tls`` when the certificate was read again: a
            prefork pool replaces its workers only when something they hold is in it.
        grace: the stop's grace period, seconds.
        upgrade_timeout: how long a SIGUSR2's new master may take, seconds.
        policy: the admission policy for new connections (its gate has taken over
            the running one's counts and buckets).
        service: what new connections' children (or new workers) run.
        recipe: what fork mode's new forker is started with (parent.forker), or
            None (no forker).
        pool: prefork: ``min_spare``, ``max_spare``, ``max_workers``,
            ``max_requests``; None in fork mode.
        max_conns: fork mode's limit; None in prefork mode.
        log_format: "text" or "json".
        log_level: QUIET, INFO or DEBUG (see forkserve._log).
    """

    __slots__ = (
        "changed",
        "grace",
        "held",
        "log_format",
        "log_level",
        "max_conns",
        "policy",
        "pool",
        "recipe",
        "service",
        "then",
        "upgrade_timeout",
        "workers",
    )

    def __init__(
        self,
        settings: Settings,
        changed: frozenset[str],
        policy: Policy,
        service: Service,
        recipe: bytes | None = None,
    ) -> None:
        prefork = settings.mode == "prefork"
        self.changed = changed
        self.grace = settings.grace
        self.upgrade_timeout = settings.upgrade_timeout
        self.policy = policy
        self.service = service
        self.recipe = recipe
        self.pool = (
            {
                "min_spare": settings.min_spare,
                "max_spare": settings.max_spare,
                "max_workers": settings.max_workers,
                "max_requests": settings.max_requests,
            }
            if prefork
            else None
        )
        self.max_conns = None if prefork else settings.max_conns
        self.workers = settings.workers if settings.mode == "async" else 0  # 0: as it is
        self.log_format = settings.log_format
        self.log_level = settings.log_level
        # How the reload ends (see reload): applied (None) or refused (the error).
        self.then: Callable[[ForkserveError | None], None] | None = None
        self.held = False

    def hold(self) -> Callable[[ForkserveError | None], None]:
        """For a process model that must wait (a new forker's READY) before the
        reload applies: the reload waits, and the returned call ends it then."""
        assert self.then is not None
        self.held = True
        return self.then


def reload(server: Server) -> None:
    """Re-read the configuration and apply it to new connections.

    Live connections keep what they were started with: each child has its own copy
    of the settings, and prefork workers are replaced, never changed in place.

    Fork mode: when it needs a new forker, the reload applies once that one is
    ready (the old one serving meanwhile), never blocking the loop (see
    Forkers.reload).

    Error handling: a configuration that fails any check (the file, a rule, a
    limit, a resource limit above the server's own), or whose new forker fails,
    is logged as ``reload-failed`` and nothing changes.
    """
    loop = server.loop
    assert loop is not None
    if server.reload_source is None:
        server.log.notice("reload", changed="none", reason="no configuration to re-read")
        return
    try:
        new, changed, upgrade = server.reload_source()
        new = kept_for_upgrade(server.settings, new)
        policy, service = rebuild(server, new)
    except ForkserveError as exc:
        refused(server, exc)
        return
    reloaded = set(changed)
    # The TLS files, read again (a renewed certificate), before the loop forks the
    # replacement workers; a bad one is logged and the old one stays.
    tls = server.edge is not None and server.edge.tls is not None
    if tls and server.reload_tls():
        reloaded.add("tls")  # what a prefork worker holds: it is replaced
    plan = ReloadPlan(new, frozenset(reloaded), policy, service, server.recipe(new))
    plan.then = lambda error: finish(server, new, plan, changed, upgrade, error)
    try:
        loop.model.prepare_reload(plan)  # fork mode: a new forker, if it holds what changed
    except ForkserveError as exc:
        refused(server, exc)
        return
    if plan.held:  # it ends when the new forker is ready, or failed (then)
        loop.reloading.hold()
    else:
        apply(server, new, plan, changed, upgrade)


def finish(  # noqa: PLR0917 - the reload's own parts, handed on
    server: Server,
    new: Settings,
    plan: ReloadPlan,
    changed: list[str],
    upgrade: list[str],
    error: ForkserveError | None,
) -> None:
    """A reload that waited for its new forker ends: applied, or refused (``error``)."""
    if error is not None:
        refused(server, error)
    else:
        apply(server, new, plan, changed, upgrade)
    assert server.loop is not None
    server.loop.reloading.settled()  # systemd: READY=1 now


def apply(
    server: Server, new: Settings, plan: ReloadPlan, changed: list[str], upgrade: list[str]
) -> None:
    """The reload is taken: the loop applies ``plan``; log it."""
    loop = server.loop
    assert loop is not None
    plan.policy.gate.take_over(server.policy.gate)  # counts and rate buckets carry on
    server.take_settings(new, plan.policy)  # what the next reload compares with
    loop.apply_reload(plan)
    fields: dict[str, object] = {"changed": ",".join(changed) or "none"}
    if upgrade:
        fields["needs_upgrade"] = ",".join(upgrade)
    if isinstance(plan.service, ExecService):  # how programs start now: see parent.spawn
        fields["start"] = "spawn" if plan.service.spawnable else "fork"
    server.log.notice("reload", **fields)
    loop.metrics.operation("reload-ok")


def refused(server: Server, exc: ForkserveError) -> None:
    server.log.warning("reload-failed", error=str(exc), kept="the running configuration")
    assert server.loop is not None
    server.loop.metrics.operation("reload-failed")


def kept_for_upgrade(old: Settings, new: Settings) -> Settings:
    """``new``, with what only a new process changes as it is: the mode, the IPv6
    prefix live connections are counted by, and the lifetime whose timers run in
    order of start (see config.table)."""
    return new.replace(mode=old.mode, ipv6_prefix=old.ipv6_prefix, max_lifetime=old.max_lifetime)


def rebuild(server: Server, new: Settings) -> tuple[Policy, Service]:
    """The admission policy and the service the new settings ask for, checked.

    Raises:
        UsageError: a limit, rule, timeout or resource limit out of range.
    """
    from forkserve.parent.assemble import (
        check_settings,
        make_policy,
        make_service,
        make_settings_prelude,
    )

    check_settings(new)
    policy = make_policy(new, server.edge)
    # With PROXY or TLS the edge keeps its own deadline (set at start-up).
    prelude = make_settings_prelude(new, server.log, server.edge)
    _, service = make_service(server.handler, prelude, server.log, new.mode, server.edge)
    if server.listener.unix and isinstance(service, ExecService):
        service.on_unix_socket()
    return policy, service
