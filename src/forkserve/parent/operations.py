"""What operators add to the parent's loop: metrics, systemd status, upgrade, reload.

A mixin of ``Supervisor``: each feature costs the loop one ``is not None`` test when
it is off, and its module is imported only when it is turned on (``--metrics``,
``NOTIFY_SOCKET``, the first SIGUSR2), so the forking parent stays lean.
"""

from __future__ import annotations

import os
import time

from forkserve.config.defaults import DEFAULT_UPGRADE_TIMEOUT

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from forkserve._log import Log
    from forkserve.config.reload import ReloadPlan
    from forkserve.core.metrics import Metrics
    from forkserve.parent.children import Exited
    from forkserve.parent.endpoint import MetricsEndpoint
    from forkserve.parent.listeners import Listener
    from forkserve.parent.systemd import Status
    from forkserve.parent.upgrade import Upgrade


class NoMetrics:
    """What the loop records into without ``--metrics``: nothing (see core.metrics.Metrics)."""

    def accepted(self) -> None:
        pass

    def rejected(self, reason: str, count: int = 1) -> None:
        pass

    def forked(self, seconds: float) -> None:
        pass

    def ended(self, seconds: float) -> None:
        pass

    def exited(self, exit_code: int | None, signal_number: int | None) -> None:
        pass

    def operation(self, name: str) -> None:
        pass


class Operations:
    """Metrics endpoint, systemd notifications and the SIGUSR2 upgrade, for the loop.

    The loop (``Supervisor``) provides ``sel``, ``log``, ``listener``, ``stopping``,
    ``grace``, the stop state, and ``active()``/``busy()``/``capacity()``.
    """

    log: Log
    listener: Listener | None
    stopping: str | None
    grace: float
    phase: str
    deadline: float | None

    def init_operations(self) -> None:
        # --metrics: where counts go, and the HTTP endpoint served from this loop.
        self.metrics: Metrics | NoMetrics = NoMetrics()
        self.endpoint: MetricsEndpoint | None = None
        # Under systemd (NOTIFY_SOCKET): READY, STATUS and STOPPING notifications.
        self.status: Status | None = None
        # SIGUSR2: the new master, while it starts and after the handover.
        self.upgrade: Upgrade | None = None
        self.upgrade_timeout = DEFAULT_UPGRADE_TIMEOUT
        self.handing_over = False
        # SIGHUP: re-reads the configuration and applies it (set by Server).
        self.reloader: Callable[[], None] | None = None

    # -- what the loop calls ------------------------------------------------------------

    def operations_deadlines(self) -> tuple[float | None, ...]:
        return (
            self.endpoint.deadline() if self.endpoint is not None else None,
            self.status.due if self.status is not None else None,
            self.upgrade.deadline if self.upgrade is not None else None,
        )

    def operations_timers(self, now: float) -> None:
        if self.endpoint is not None:
            self.endpoint.on_deadline(now)
        if self.upgrade is not None:
            self.upgrade.on_deadline(now)

    def notify_status(self) -> None:
        if self.status is not None:
            self.status.update(self.stopping is not None, self.active(), time.monotonic())

    def upgrade_exits(self, exits: list[Exited]) -> list[Exited]:
        """Reaped children, without the new master (which is not a connection's)."""
        return self.upgrade.take_exit(exits) if self.upgrade is not None else exits

    def close_endpoint(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    def close_extras_in_child(self) -> None:
        """The metrics, notification and upgrade descriptors are the parent's, and
        so is the log's backlog (see Log.in_child)."""
        self.log.in_child()
        if self.endpoint is not None:
            self.endpoint.close_in_child()
        if self.status is not None:
            self.status.notifier.close_in_child()
        if self.upgrade is not None:
            self.upgrade.close_in_child()

    # -- metrics ------------------------------------------------------------------------

    def gauges(self) -> dict[str, object]:
        """The numbers a scrape reads now: connections ``active`` and their ``limit``."""
        return {"active": self.busy(), "limit": self.capacity()}

    def health(self) -> tuple[int, bytes]:
        """``/healthz``: 200 while serving; 503 once stopping, so a balancer moves on."""
        return (200, b"ok\n") if self.stopping is None else (503, b"stopping\n")

    # -- SIGHUP -------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration; new settings apply to new connections.

        Under systemd: RELOADING=1 (with MONOTONIC_USEC) first, READY=1 after,
        whether the new configuration was taken or refused.
        """
        if self.stopping is not None:
            self.log.warning("reload-ignored", reason="stopping")
            return
        if self.status is not None:
            self.status.notifier.reloading()
        if self.reloader is not None:
            self.reloader()
        else:
            self.log.notice("reload", changed="none", reason="no configuration to re-read")
        if self.status is not None:
            self.status.ready(self.active(), again=True)

    def reconfigure(self, plan: ReloadPlan) -> None:
        """Apply reloaded limits (each process model reads its own); ``plan.changed``
        names the settings that differ (see config.reload)."""

    # -- SIGUSR2 ------------------------------------------------------------------------

    def begin_upgrade(self) -> None:
        """Start a new master (see parent.upgrade); this one serves on until it is ready."""
        if self.stopping is not None or self.listener is None:
            self.log.warning("upgrade-ignored", reason="stopping")
            return
        if self.upgrade is not None:
            self.log.warning("upgrade-ignored", reason="in-progress", pid=self.upgrade.pid)
            return
        from forkserve.parent.upgrade import start_upgrade

        self.upgrade = start_upgrade(self, time.monotonic())  # type: ignore[arg-type]

    def hand_over(self, new_pid: int) -> None:
        """The new master serves: stop accepting, without a drain of the shared queue.

        The queue is the new master's now, so nothing is accepted first (as a
        graceful stop does) and the socket is closed, never shut down. Under
        systemd, MAINPID moves to the new master, and this one sends nothing more
        (a STOPPING=1 now would stop the service).
        """
        self.log.notice("upgrade-ready", pid=new_pid)
        if self.status is not None:
            self.status.notifier.send(MAINPID=new_pid, STATUS=f"upgraded to pid {new_pid}")
            self.status = None
        if self.stopping is not None:
            return  # a stop began meanwhile: it goes on as it started
        self.handing_over = True
        self.stopping = "graceful"
        self.stop_listening()
        self.close_endpoint()
        self.phase = "drain"
        self.deadline = time.monotonic() + self.grace
        self.log.notice(
            "stop",
            signal="SIGUSR2",
            mode="upgrade",
            conns=self.active(),
            queued=0,
            grace=f"{self.grace}s",
            pid=os.getpid(),
        )

    # -- what the loop provides ---------------------------------------------------------

    def active(self) -> str:
        raise NotImplementedError

    def busy(self) -> int:
        raise NotImplementedError

    def capacity(self) -> int:
        raise NotImplementedError

    def stop_listening(self) -> None:
        raise NotImplementedError
