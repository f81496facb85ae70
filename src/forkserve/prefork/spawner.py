"""Starting the prefork pool's workers: forked here, or by a forker.

With a forker (prefork.forked: the default when the handler can be named to a fresh
process), each worker is forked from it and carries its small image; the supervisor
learns the worker's pid when it starts. Without one (a handler only this process
holds, ``FORKSERVE_FORKER=0``, or no forker running just now), the supervisor forks
the worker itself, as before the forker.
"""

from __future__ import annotations

import errno
import socket
import time

from forkserve.parent.fork import fork_child
from forkserve.parent.listeners import CAPACITY_ERRNOS

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from typing import Any

    from forkserve.prefork.forked import WorkerForkers

# What a spawn may run out of: descriptors (its channel and wakeup pairs), memory,
# processes (fork's EAGAIN). A failed spawn is retried after the back-off.
SPAWN_ERRNOS = CAPACITY_ERRNOS | {errno.EAGAIN}


class Spawner:
    """Starts the workers of ``pool`` (prefork.pool.Pool, or asyncmode's) and tracks
    a burst of failed spawns.

    Resource handling: owns the forkers (closed by the pool's close) and, until a
    worker is started, the supervisor's end of its question channel.
    """

    __slots__ = ("burst", "forkers", "pool")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.forkers: WorkerForkers | None = None  # who forks workers; None: we do
        self.burst: tuple[str, int] | None = None  # (errno name, failures)

    def start_forker(self, recipe: bytes) -> None:
        """Fork workers from a forker started with ``recipe`` (see prefork.forked).

        Raises:
            StartFailed: the forker did not start (the handler did not import there).
        """
        from forkserve.prefork.forked import WorkerForkers

        forkers = WorkerForkers(self.pool.loop, self, recipe)
        forkers.start()
        self.forkers = forkers

    def spawn(self, now: float) -> bool:
        """Start one worker; False (logged once per burst, backed off) if out of a resource.

        Error handling: everything the supervisor allocates for a worker (its question
        channel, the wakeup pair it is forked with, the fork itself) can fail for lack
        of descriptors, memory or processes (EMFILE, ENFILE, ENOBUFS, ENOMEM,
        EAGAIN). Each is a failed spawn: whatever was allocated is closed again, the
        pool serves with the workers it has, and maintain() retries after the crash
        back-off. Any other errno is a bug and is raised.
        """
        forkers, pool = self.forkers, self.pool
        try:
            if forkers is not None and forkers.current is not None:
                forkers.launch(now, pool.policy.max_requests, self.question_channel())
                return True  # started when its STARTED comes: see adopt
            pid, ours = pool.fork_worker()  # async mode adds to it (its token slot)
        except OSError as exc:
            if exc.errno not in SPAWN_ERRNOS:
                raise
            self.failed(exc.errno, now)
            return False
        self.adopt(pid, ours)
        return True

    def question_channel(self) -> tuple[socket.socket, socket.socket] | None:
        """A new worker's question channel (ours, its end), if it asks (child.ask)."""
        policy = self.pool.admission.policy
        if policy.gate.limits_sources or policy.proxy:
            return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return None

    def adopt(
        self, pid: int, ours: socket.socket | None, via: object = None, old: bool = False
    ) -> None:
        """A worker started (``via``: the forker that forked it; ``old``: forked
        with settings a reload replaced since, so it retires at once)."""
        pool, now = self.pool, time.monotonic()
        if self.burst is not None:
            name, failures = self.burst
            pool.log.notice("spawn-resumed", after=name, failures=failures)
            self.burst = None
            pool.policy.crash_free()  # the back-off was the shortage's, and it is over
        pool.table.add(pid, now, ours)
        pool.children.add(pid, "worker", -1 if via is None else None, pool, via)
        if ours is not None:
            pool.loop.watch(ours, lambda mask: pool.on_channel(pid))
        pool.log.debug("worker-start", pid=pid, workers=len(pool.workers))
        if via is not None:  # what it reported before its STARTED was read
            pool.table.read_status(now)
        if old:
            pool.retire(pool.workers[pid], "reload")

    def fork_worker(self) -> tuple[int, socket.socket | None]:
        """Allocate a worker's descriptors and fork it: ``(pid, channel or None)``.

        Raises:
            OSError: socketpair(2) or fork(2) failed; nothing is left open.
        """
        pool = self.pool
        ours = theirs = None
        worker = None
        try:
            ours, theirs = self.question_channel() or (None, None)
            worker = pool.make_worker(theirs)

            def close_in_worker() -> None:
                pool.loop.close_shared_in_child()
                pool.close_in_child(keep_status=True)
                if ours is not None:
                    ours.close()
                worker.install_signals()

            pid = fork_child(worker.run, close_in_worker)
        except OSError:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
            if worker is not None:
                worker.close_in_parent()
        return pid, ours

    def failed(self, number: int, now: float) -> None:
        """Log the first failed spawn of a burst; count the others; back off."""
        pool = self.pool
        if self.burst is None:
            name = pool.loop.events.fork_failed(number, workers=len(pool.workers))
            self.burst = (name, 0)
        self.burst = (self.burst[0], self.burst[1] + 1)
        pool.policy.note_crash(now)
