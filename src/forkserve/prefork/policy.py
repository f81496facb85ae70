"""The prefork pool's decisions, pure: how many workers to spawn, which to retire,
how long to back off after crashes. No process, socket or clock: times are passed in
(a unit test drives it with a fake clock; see prefork.pool for the side that acts).

- Spawning: when idle workers fall below ``min_spare``, spawn the shortfall at once;
  while shortfalls follow one another, each batch doubles (1, 2, 4 ... 32), as Apache
  does, so a burst is met quickly without a fork storm in the steady state.
- Retiring: an idle worker beyond ``max_spare`` retires once it has been idle for
  RETIRE_IDLE seconds, so a pool does not shrink and regrow between two bursts.
- Recycling: a worker exits after ``max_requests`` connections and is replaced.
- Crashes: a worker that dies unasked is replaced after a back-off that doubles with
  each crash in a row (0.1 s up to 10 s) and resets when a worker completes a
  connection.
"""

from __future__ import annotations

RETIRE_IDLE = 1.0
MAX_SPAWN_BATCH = 32
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
# Reloadable settings only the supervisor reads: a reload that changes nothing else
# keeps the workers. Each worker holds the rest: the handler's prelude (banner, time
# and resource limits), the access rules and --reject-message, its --max-requests,
# the log's level and format, the TLS context. --per-ip and --rate are counted by the
# supervisor, but turning them on or off gives workers a channel or takes it away.
# Async mode's pool (asyncmode.pool) moves --max-conns and --workers itself.
SUPERVISOR_SETTINGS = frozenset(
    {
        *("grace", "upgrade-timeout", "min-spare", "max-spare", "max-workers"),
        *("per-ip", "rate", "max-conns", "workers"),
    }
)
POOL_SETTINGS = ("min_spare", "max_spare", "max_workers", "max_requests")


class WorkerState:
    """The supervisor's view of one worker."""

    __slots__ = ("peer", "pid", "served", "since", "source", "state", "stopping")

    def __init__(self, pid: int, now: float) -> None:
        self.pid = pid
        self.state = "starting"  # "starting", "idle" or "busy"
        self.since = now  # when it entered that state
        self.peer = ""
        self.served = 0
        self.stopping = False  # asked to retire or to stop
        self.source: int | None = None  # counted against while busy (per-source limits)


class PoolPolicy:
    """The pool's limits and the state its decisions carry (batch, crashes)."""

    __slots__ = (
        "backoff_until",
        "crashes",
        "max_requests",
        "max_spare",
        "max_workers",
        "min_spare",
        "spawn_batch",
    )

    def __init__(self, min_spare: int, max_spare: int, max_workers: int, max_requests: int) -> None:
        self.min_spare = min_spare
        self.max_spare = max_spare
        self.max_workers = max_workers
        self.max_requests = max_requests
        self.spawn_batch = 1
        self.crashes = 0
        self.backoff_until = 0.0

    def configure(self, pool: dict[str, int]) -> None:
        """New limits (a reload: ``POOL_SETTINGS`` by name)."""
        self.min_spare = pool["min_spare"]
        self.max_spare = pool["max_spare"]
        self.max_workers = pool["max_workers"]
        self.max_requests = pool["max_requests"]

    def resize(self, step: int) -> None:
        """SIGTTIN (+1) or SIGTTOU (-1): move the spare range, keeping it sound."""
        self.min_spare = max(1, self.min_spare + step)
        self.max_spare = max(self.min_spare, self.max_spare + step)

    def to_spawn(self, workers: list[WorkerState], now: float) -> int:
        """How many workers to fork now; each shortfall in a row doubles the batch."""
        spare = count(workers, "idle") + count(workers, "starting")
        room = self.max_workers - sum(1 for w in workers if not w.stopping)
        if spare < self.min_spare and room > 0 and now >= self.backoff_until:
            batch = min(max(self.min_spare - spare, self.spawn_batch), room)
            self.spawn_batch = min(self.spawn_batch * 2, MAX_SPAWN_BATCH)
            return batch
        if spare >= self.min_spare:
            self.spawn_batch = 1
        return 0

    def to_retire(self, workers: list[WorkerState], now: float) -> list[WorkerState]:
        """Idle workers beyond ``max_spare`` that have been idle RETIRE_IDLE seconds,
        longest idle first."""
        surplus = count(workers, "idle") - self.max_spare
        if surplus <= 0:
            return []
        idle = sorted((w for w in workers if w.state == "idle" and not w.stopping), key=since)
        return [w for w in idle[:surplus] if now - w.since >= RETIRE_IDLE]

    def deadline(self, workers: list[WorkerState]) -> float | None:
        """When the next decision falls due: a retirement, or the back-off's end."""
        idle = [w.since for w in workers if w.state == "idle" and not w.stopping]
        retire_at = min(idle) + RETIRE_IDLE if len(idle) > self.max_spare else None
        spare = count(workers, "idle") + count(workers, "starting")
        backoff = self.backoff_until if spare < self.min_spare and self.backoff_until else None
        if retire_at is None or backoff is None:
            return backoff if retire_at is None else retire_at
        return min(retire_at, backoff)

    def note_crash(self, now: float) -> None:
        """A worker died unasked (or a spawn failed): back off, twice as long each time."""
        self.backoff_until = now + min(BACKOFF_FIRST * 2**self.crashes, BACKOFF_MAX)
        self.crashes += 1

    def crash_free(self) -> None:
        """A worker completed a connection (or spawning works again): no back-off."""
        self.crashes = 0

    def exit_reason(self, worker: WorkerState, exit_code: int | None, stopping: bool) -> str:
        """Why a worker left: "stopped", "max-requests" or "crashed" (backed off)."""
        if worker.stopping or stopping:
            return "stopped"
        if exit_code == 0:
            return "max-requests"  # the one way a worker leaves cleanly unasked
        return "crashed"

    def was_waiting(self, worker: WorkerState) -> bool:
        """Whether a worker that left may have been waiting in epoll on the listener:
        idle, and not leaving because it reached --max-requests (it then exits right
        after its connection, without waiting again)."""
        done = self.max_requests and worker.served >= self.max_requests
        return worker.state == "idle" and not done


def count(workers: list[WorkerState], state: str) -> int:
    """Workers in ``state`` that are not leaving."""
    return sum(1 for w in workers if w.state == state and not w.stopping)


def since(worker: WorkerState) -> float:
    return worker.since
