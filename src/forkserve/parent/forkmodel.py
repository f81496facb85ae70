"""Fork mode's parent: accept while below --max-conns, fork a child per connection."""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable

from forkserve._log import Log
from forkserve.child.handler import Service
from forkserve.core.gate import Policy
from forkserve.parent.children import Exited
from forkserve.parent.listeners import Listener
from forkserve.parent.loop import Supervisor

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from forkserve.config.reload import ReloadPlan

# At most this many accepts per wakeup, so signals (a stop, a burst of exits) are
# looked at between batches even under a connection flood.
ACCEPT_BATCH = 64


class ForkLoop(Supervisor):
    """Fork mode: one child per connection, at most ``max_conns`` at once.

    Resource handling: the listener belongs to the caller, but the loop closes it when
    a stop begins (so the kernel refuses new clients at once, rather than queueing
    them for a server that is leaving).
    """

    def __init__(
        self,
        listener: Listener,
        service: Service,
        log: Log,
        *,
        max_conns: int,
        grace: float,
        ready: Callable[[], None] | None = None,
        policy: Policy | None = None,
    ) -> None:
        super().__init__(listener, service, log, grace=grace, ready=ready, policy=policy)
        self.max_conns = max_conns
        self.listening = False

    def has_slot(self) -> bool:
        return len(self.children) < self.max_conns

    def reconfigure(self, plan: ReloadPlan) -> None:
        """A reload's new limit applies from the next accept; children are untouched."""
        if plan.max_conns is not None:
            self.max_conns = plan.max_conns

    def busy(self) -> int:
        return len(self.children)

    def capacity(self) -> int:
        return self.max_conns

    def before_wait(self) -> None:
        """Watch the listener only while a connection could be taken now.

        At --max-conns it leaves the selector and the kernel's backlog is the queue.
        """
        listener = self.listener
        if listener is None:
            return  # closed, and stop_listening() unregistered it
        want = self.stopping is None and self.has_slot() and not self.paused_until
        if want != self.listening:
            if want:
                self.sel.register(listener, selectors.EVENT_READ)
            else:
                self.sel.unregister(listener)
            self.listening = want

    def deadlines(self) -> tuple[float | None, ...]:
        return (self.paused_until or None,) if self.listener is not None else ()

    def on_deadlines(self, now: float) -> None:
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0

    def on_ready(self, key: selectors.SelectorKey, mask: int) -> None:
        if self.listening and key.fileobj is self.listener:
            for _ in range(ACCEPT_BATCH):
                if not self.has_slot() or self.paused_until:
                    return
                accepted = self.accept_one()
                if accepted is None:
                    return
                self.fork_connection(*accepted)

    def on_exits(self, exits: list[Exited]) -> None:
        now = time.monotonic()
        for ended in exits:
            self.log_child_end(ended, now)
        self.serve_pending()

    def close_in_child(self) -> None:
        """Undo the parent's set-up in a fresh child (see fork_child).

        Descriptors are closed by number, not through their objects' close(): the
        child never uses those objects again and ends in os._exit, and every object
        a child touches is memory it copies from the parent (see parent.signals).
        """
        os.close(self.sel.fileno())
        if self.listener is not None:
            os.close(self.listener.fileno())
        if self.sigs is not None:
            self.sigs.close_in_child()
        for other, _ in self.pending:
            os.close(other.fileno())
        self.close_questions_in_child()
        self.close_extras_in_child()

    def stop_listening(self) -> None:
        if self.listening and self.listener is not None:
            self.sel.unregister(self.listener)
            self.listening = False
        super().stop_listening()
