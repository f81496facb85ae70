"""Prefork workers forked by a forker, the supervisor's side (see forker.workers).

The pool's workers are forked by a forker (parent.forker's process, started fresh
with ``posix_spawn``), as fork mode's connections are, so each carries the forker's
small image (the child-side code and the handler), not the supervisor's (its loop,
logs, metrics, reload and upgrade code, and every page it wrote since it started).

- Once per forker, the descriptors every worker shares go to it (POOL); then one
  WORKER item per worker, with its question channel (child.ask) when it asks.
- A worker is ``launching`` from its WORKER item until its STARTED (which the worker
  itself sends, before its first status report: see forker.workers); the policy
  counts it as a starting worker meanwhile, so the pool never forks twice for one
  shortfall. From STARTED on it is in the WorkerTable by pid, as before; what it
  reported before its STARTED was read (the two sockets are read one after the
  other) waits in the table meanwhile (WorkerTable.reports) and counts then.
- Its exit comes as the forker's EXITED report; signals to it (retire, end, the
  --max-lifetime kill) go through the forker, its parent: never to a reused pid.
- A forker that dies: its workers are the supervisor's (a subreaper), reaped and
  signalled as any child; a new forker forks the next ones (parent.forker).
- A reload that replaces the workers starts a new forker for the new settings;
  workers still launching from the old one retire as soon as they start.
"""

from __future__ import annotations

import os

from forkserve._errors import EXIT_TEMPORARY
from forkserve.forker import wire
from forkserve.parent.forker import Forkers
from forkserve.parent.forkerlink import Launch
from forkserve.parent.forkerstart import StartFailed
from forkserve.prefork.policy import WorkerState

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any

    from forkserve._errors import ForkserveError
    from forkserve.config.reload import ReloadPlan
    from forkserve.parent.forkerlink import Link
    from forkserve.prefork.pool import Pool
    from forkserve.prefork.spawner import Spawner


class Passed:
    """A descriptor to pass (a duplicate of one the pool keeps): closed once sent."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class WorkerLaunch(Launch):
    """A worker handed to a forker and not yet started: its placeholder state
    (``starting``, or ``stopping`` once a reload made it old) and its channel."""

    __slots__ = ("state",)

    def __init__(self, link: Any, now: float, ours: socket.socket | None) -> None:
        super().__init__(link, "worker", None, now, ours)
        self.state = WorkerState(0, now)


class WorkerForkers(Forkers):
    """The forkers of a prefork pool, for its ``spawner``. See the module docstring."""

    __slots__ = ("launching", "spawner")

    def __init__(self, loop: Any, spawner: Spawner, recipe: bytes) -> None:
        super().__init__(loop, spawner.pool.conns, recipe, needed=True)
        self.spawner = spawner
        self.launching: list[WorkerLaunch] = []

    def start(self) -> None:
        """Start a forker (waiting for it: a start-up step) and send it what every
        worker shares (POOL).

        Raises:
            StartFailed: it did not start, or the shared descriptors could not be
                duplicated for it (EMFILE).
        """
        passed = self.shared()
        try:
            super().start()
        except StartFailed:
            for each in passed:
                each.close()
            raise
        assert self.current is not None
        self.current.send((wire.POOL,), passed)  # type: ignore[arg-type] # fileno, close

    def begin(self, recipe: bytes) -> Link:
        """Start a forker without waiting (a reload's, a respawn's): POOL waits in its
        outbox until it is ready, as anything sent to it does.

        Raises:
            StartFailed: as ``start``.
        """
        passed = self.shared()
        try:
            link = super().begin(recipe)
        except StartFailed:
            for each in passed:
                each.close()
            raise
        link.send((wire.POOL,), passed)  # type: ignore[arg-type] # fileno, close
        return link

    def shared(self) -> list[Passed]:
        """Duplicates of what every worker shares: the listener, the status socket,
        and the read end of the alive pipe of the workers to come.

        Raises:
            StartFailed: dup(2) failed (EMFILE); nothing is left open.
        """
        pool = self.spawner.pool
        fds = (pool.listener.fileno(), pool.table.status_w.fileno(), pool.alive_r)
        passed: list[Passed] = []
        try:
            passed.extend(Passed(os.dup(fd)) for fd in fds)
        except OSError as exc:
            for each in passed:
                each.close()
            raise StartFailed(EXIT_TEMPORARY, f"cannot start the forker: {exc}") from None
        return passed

    def reload_workers(self, plan: ReloadPlan, pool: Pool) -> None:
        """A reload that replaces the workers: a forker for the new settings, and a
        new alive pipe whose read end its POOL carries. The reload waits for it
        (``plan.hold``: see Forkers.reload); once it applies, pool.apply_reload
        closes the old pipe (the old workers see its end at once); refused, the old
        pipe is put back. A reload still waiting is refused first, so each pipe is
        put back by the reload that made it.

        Raises:
            StartFailed: the new forker (or its pipe) could not be made.
        """
        self.cancel("a newer reload came")
        old_pipe = pool.new_alive_pipe()

        def hold() -> Callable[[ForkserveError | None], None]:
            then = plan.hold()

            def end(error: ForkserveError | None) -> None:
                if error is None:
                    pool.old_alive = old_pipe
                else:
                    pool.restore_alive_pipe(old_pipe)
                then(error)

            return end

        assert plan.recipe is not None
        try:
            self.reload(plan.recipe, plan.changed, False, hold)
        except StartFailed:
            pool.restore_alive_pipe(old_pipe)
            raise
        if self.next is None:  # no new forker (nothing it holds changed): the same pipe
            pool.restore_alive_pipe(old_pipe)

    def states(self) -> list[WorkerState]:
        """The workers launching, as the policy counts them (starting)."""
        return [launch.state for launch in self.launching]

    def launch(self, now: float, max_requests: int, ask: tuple[Any, Any] | None) -> None:
        """Hand a worker to the current forker (``ask``: its question channel, ours
        and its end; its end is closed once sent)."""
        link = self.current
        assert link is not None
        cid = self.next_id
        self.next_id = cid + 1
        launch = WorkerLaunch(link, now, None if ask is None else ask[0])
        link.launches[cid] = launch
        self.launching.append(launch)
        self.spawner.pool.table.expect(len(self.launching))
        fds = [] if ask is None else [ask[1]]
        link.send((wire.WORKER, cid, {"max_requests": max_requests}, len(fds)), fds)

    def outdate(self) -> None:
        """A reload replaced the workers: those still launching retire once started."""
        for launch in self.launching:
            if launch.link is not self.current:
                launch.state.stopping = True

    def started(self, launch: Launch, pid: int) -> None:
        assert isinstance(launch, WorkerLaunch)
        self.launching.remove(launch)
        self.spawner.pool.table.expect(len(self.launching))
        self.spawner.adopt(pid, launch.ours, launch.link, launch.state.stopping)

    def failed(self, launch: Launch, number: int) -> None:
        """The fork failed in the forker (or the channel did not arrive): a failed
        spawn, backed off as one."""
        self.release(launch)
        self.spawner.failed(number, self.loop.clock())

    def release(self, launch: Launch) -> None:
        """A launch that will never start (failed, or its forker died first)."""
        assert isinstance(launch, WorkerLaunch)
        if launch in self.launching:
            self.launching.remove(launch)
            self.spawner.pool.table.expect(len(self.launching))
        super().release(launch)
