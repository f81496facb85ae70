"""The process-model interface the loop serves with: a type for mypy only.

Imported under ``TYPE_CHECKING`` alone (``typing`` stays out of the serving parent):
fork mode's ``ForkModel`` (parent.forkmodel) and prefork's ``Pool`` (prefork.pool)
implement it, and so will the next models (a forker, a spawner). See parent.loop for
how the loop calls it.
"""

from __future__ import annotations

from typing import Protocol

from forkserve.config.reload import ReloadPlan
from forkserve.parent.listeners import Listener


class ProcessModel(Protocol):
    """What the loop asks of a process model."""

    @property
    def listener(self) -> Listener | None:
        """The listening socket, or None once a stop (or a handover) closed it."""

    def start(self) -> None:
        """Set up before the loop first waits (prefork starts its workers here)."""

    def before_wait(self) -> None:
        """Adjust what the selector watches before each wait."""

    def has_slot(self) -> bool:
        """Whether one more connection may be served now."""

    def busy(self) -> int:
        """Connections being served now."""

    def capacity(self) -> int:
        """Connections served at once, at most."""

    def queued(self) -> int:
        """Connections accepted at a stop, waiting for a slot."""

    def gauges(self) -> dict[str, object]:
        """The numbers a metrics scrape reads now."""

    def before_exits(self, now: float) -> None:
        """Before a batch of exits goes to the children's owners."""

    def after_exits(self, now: float) -> None:
        """After a batch of exits: serve what waits, replace what left."""

    def stop(self, *, drain: bool, shared: bool) -> int:
        """Stop taking connections (``drain``: accept what is queued first;
        ``shared``: a new master shares the socket). Returns how many wait."""

    def expire(self) -> None:
        """The grace period is over: drop what still waits."""

    def terminate(self) -> None:
        """Ask every child to end now."""

    def deadline(self) -> float | None:
        """The model's nearest deadline (monotonic seconds), or None."""

    def on_deadline(self, now: float) -> None:
        """Act on the model's deadlines that have passed."""

    def resize(self, step: int) -> bool:
        """SIGTTIN (+1), SIGTTOU (-1); False when there is nothing to resize."""

    def prepare_reload(self, plan: ReloadPlan) -> None:
        """What a reload needs started before it applies (a new forker); raises
        ForkserveError to refuse it."""

    def apply_reload(self, plan: ReloadPlan) -> None:
        """Take what is the model's in a reload's plan (see Loop.apply_reload)."""

    def close_in_child(self) -> None:
        """In a fresh child: close what the model holds (see Loop.close_in_child)."""

    def close(self) -> None:
        """Release what the model holds beyond the loop itself."""
