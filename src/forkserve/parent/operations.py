"""What operators add to the parent's loop: metrics counts, reload, upgrade.

Each is an object the loop holds; each feature costs the loop one ``is not None``
test when it is off, and its module is imported only when it is turned on
(``--metrics``, ``NOTIFY_SOCKET``, the first SIGUSR2), so the forking parent stays
lean. The metrics endpoint (parent.endpoint) and systemd's status (parent.systemd)
are handed to the loop as they are (``Loop.add_metrics``, ``Loop.add_status``).
"""

from __future__ import annotations

import time

from forkserve.config.defaults import DEFAULT_UPGRADE_TIMEOUT

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable

    from forkserve.parent.loop import Loop
    from forkserve.parent.upgrade import Upgrade


class NoMetrics:
    """What the loop records into without ``--metrics``: nothing (see core.metrics.Metrics)."""

    __slots__ = ()

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


class Reloading:
    """SIGHUP: ``reloader`` re-reads the configuration and hands the loop a plan
    (see config.reload and Loop.apply_reload); ``waiting`` while it waits for
    something it needs (fork mode: a new forker's READY), without blocking."""

    __slots__ = ("loop", "reloader", "waiting")

    def __init__(self, loop: Loop, reloader: Callable[[], None] | None) -> None:
        self.loop = loop
        self.reloader = reloader
        self.waiting = False

    def on_signal(self, number: int) -> None:
        """Re-read the configuration; new settings apply to new connections.

        Under systemd: RELOADING=1 (with MONOTONIC_USEC) first, READY=1 once the
        new configuration was taken or refused (see settled).
        """
        loop = self.loop
        if loop.stopping is not None:
            loop.log.warning("reload-ignored", reason="stopping")
            return
        if loop.status is not None:
            loop.status.notifier.reloading()
        if self.reloader is not None:
            self.reloader()
        else:
            loop.log.notice("reload", changed="none", reason="no configuration to re-read")
        if not self.waiting:
            self.settled()

    def hold(self) -> None:
        """The reload applies (or is refused) later: settled() is called then."""
        self.waiting = True

    def settled(self) -> None:
        self.waiting = False
        loop = self.loop
        if loop.status is not None and loop.stopping is None:  # a stop cancelled it
            loop.status.ready(loop.active(), again=True)


class Upgrading:
    """SIGUSR2: start a new master (see parent.upgrade); this one serves on until it
    is ready. ``current`` is the upgrade under way, or handed over (None: none)."""

    __slots__ = ("current", "loop", "timeout")

    def __init__(self, loop: Loop, timeout: float | None) -> None:
        self.loop = loop
        self.timeout = timeout if timeout is not None else DEFAULT_UPGRADE_TIMEOUT
        self.current: Upgrade | None = None

    def on_signal(self, number: int) -> None:
        loop = self.loop
        if loop.stopping is not None or loop.model.listener is None:
            loop.log.warning("upgrade-ignored", reason="stopping")
            return
        if self.current is not None:
            loop.log.warning("upgrade-ignored", reason="in-progress", pid=self.current.pid)
            return
        from forkserve.parent.upgrade import start_upgrade

        self.current = start_upgrade(loop, time.monotonic(), self.timeout)

    def ended(self, upgrade: Upgrade) -> None:
        """The new master exited: if it never took over, a later SIGUSR2 may try again."""
        if self.current is upgrade and not upgrade.handed_over:
            self.current = None

    def close_in_child(self) -> None:
        if self.current is not None:
            self.current.close_in_child()
