"""An async worker: one process, one event loop, many connections (``--mode async``).

Built in the supervisor and forked by prefork's pool (``Pool.fork_worker``), as a
prefork worker is; once forked, ``run()`` imports asyncio and runs
``asyncmode.eventloop``. Until then nothing here loads asyncio: the supervisor
never runs an event loop.

The worker shares the supervisor's listening socket with the other workers and
accepts from it in its loop (see asyncmode.eventloop for why a shared socket, not
SO_REUSEPORT). ``--max-conns`` holds across workers through an eventfd(2) in
semaphore mode that every worker inherits: it starts at the limit; a worker takes
one (a non-blocking read) before each accept and gives it back (a write) when the
connection ends; at 0 it stops watching the listener and waits for the eventfd to
be readable again. The kernel counts, so the limit is exact without a question to
the supervisor per connection. Each worker also counts the tokens it holds, in its
slot of a page it shares with the supervisor: the count goes up just after a token
is taken and down just before one is given back, so a worker killed at any point
(SIGKILL, a segfault) leaves the tokens it held, never more, and the supervisor
gives them back when it reaps it. Only a death in the instant between the eventfd
call and the count's update (a few bytecodes) can still leak one token; the other
order would instead let a token be given back twice, over --max-conns.

It reports to the supervisor on prefork's status socket (prefork.wire): ``R pid``
ready, ``A pid N PEER`` connection N accepted, ``E pid N CODE`` connection N ended,
``D pid PEER`` denied by the rules, ``P``/``U pid ERRNO`` accept paused/resumed,
``B pid SECONDS`` its loop was blocked that long (a handler that does not await).
The A and E reports of one turn of the loop go out together, as one ``M pid``
datagram with a report a line (``A N PEER``...), and the tokens of the connections
they end are given back after it, in one write (asyncmode.outbox).

Signals, as the supervisor uses them (the same as for a prefork worker):
    SIGTERM, or EOF on the alive pipe: stop accepting; exit once every connection
    has ended (a graceful stop, a retirement at a reload).
    SIGQUIT: end now: cancel every handler, then die by SIGTERM, so the connections
    it held end with that status, as fork-mode children would.
"""

from __future__ import annotations

import os
import signal

from forkserve.prefork.worker import report_status

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    import mmap
    import socket
    from types import FrameType

    from forkserve._log import Log
    from forkserve.asyncmode.service import AsyncService
    from forkserve.core.gate import Policy


class AsyncWorker:
    """What a worker is forked with; ``run()`` is its whole life and returns its exit code.

    Resource handling: owns, in the worker process, its copies of the listener, the
    status socket, the alive pipe, the tokens' eventfd and its question channel;
    they close when the process exits.
    """

    __slots__ = (
        "alive_fd",
        "channel",
        "epoch",
        "generation",
        "held",
        "listener",
        "log",
        "max_conns",
        "pending",
        "pid",
        "policy",
        "service",
        "slot",
        "status",
        "tokens",
        "use_uvloop",
    )

    def __init__(
        self,
        listener: socket.socket,
        status: socket.socket,
        alive_fd: int,
        tokens: int,
        service: AsyncService,
        *,
        max_conns: int,
        epoch: mmap.mmap,
        held: memoryview,
        slot: int,
        policy: Policy,
        log: Log,
        channel: socket.socket | None = None,
        use_uvloop: bool = True,
    ) -> None:
        self.listener = listener
        self.status = status
        self.alive_fd = alive_fd
        self.tokens = tokens
        self.max_conns = max_conns  # its descriptors' limit is raised to hold them
        self.epoch = epoch  # the settings' generation, shared (see asyncmode.pool)
        self.generation = bytes(epoch[:8])  # the one it was forked with
        self.held = held  # the tokens each worker holds, shared (see asyncmode.pool)
        self.slot = slot  # this worker's count in it
        self.service = service
        self.policy = policy
        self.log = log
        self.channel = channel
        self.use_uvloop = use_uvloop
        self.pid = 0
        self.pending: list[int] = []  # signals that came before the event loop ran

    def close_in_parent(self) -> None:
        """Nothing of the worker's own is open in the supervisor."""

    def install_signals(self) -> None:
        """In the fresh worker, signals still blocked: note SIGTERM and SIGQUIT until
        the event loop takes them over (see asyncmode.eventloop)."""
        self.pid = os.getpid()
        for number in (signal.SIGTERM, signal.SIGQUIT):
            signal.signal(number, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def report(self, kind: str, detail: str = "") -> None:
        report_status(self.status, kind, self.pid, detail)

    def run(self) -> int:
        from forkserve.asyncmode.eventloop import run_worker

        return run_worker(self)
