"""The forker's side of prefork mode: fork the pool's workers (see prefork.forked).

The supervisor sends, once per forker, the descriptors every worker shares
(``PoolShare``: the listener, the status socket, the alive pipe's read end), then one
WORKER item per worker to start, with its question channel when it asks (see
child.ask). The forker builds a ``prefork.worker.Worker`` with the service and the
policy it built from its recipe, and forks it: the worker carries the forker's small
image (the child-side code and the handler), not the supervisor's.

The worker itself reports STARTED on the forker's channel, right after its fork and
before its first status datagram: the supervisor reads the forker's channel before
the status socket, so it always knows a worker's pid before the worker's first
report (``R``), which it would otherwise drop as a stranger's. The forker reports
only a failed fork (NOFORK) and, later, the worker's exit (EXITED).
"""

from __future__ import annotations

import os
import socket

from forkserve.forker import wire
from forkserve.parent.fork import fork_child

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forker stays free of typing
if TYPE_CHECKING:
    from typing import Any


class PoolShare:
    """The descriptors every worker shares, held by the forker (POOL, in order:
    the listener, the status socket's write end, the alive pipe's read end).

    Resource handling: owned by the forker until it exits; each worker inherits them.
    """

    __slots__ = ("alive", "listener", "status")

    def __init__(self, fds: list[int]) -> None:
        self.listener = socket.socket(fileno=fds.pop())
        self.status = socket.socket(fileno=fds.pop())
        self.alive = fds.pop()
        self.listener.setblocking(False)  # as the supervisor's: workers accept so


def start_worker(forker: Any, item: tuple[Any, ...], fds: list[int]) -> None:
    """Fork one prefork worker for ``forker`` (forker.process.Forker); its question
    channel, if any, is popped off ``fds`` and closed here either way. A failed fork
    (or a WORKER before any POOL: a bug) is reported NOFORK."""
    from forkserve.prefork.worker import Worker

    _, cid, params, nfds = item
    channel = socket.socket(fileno=fds.pop()) if nfds else None
    share = forker.pool
    worker = None
    if share is None:
        if channel is not None:
            channel.close()
        forker.reports.append((wire.NOFORK, cid, 0))
        return
    try:
        worker = Worker(
            share.listener,
            share.status,
            share.alive,
            forker.service,
            params["max_requests"],
            policy=forker.policy,
            log=forker.log,
            channel=channel,
        )
        run = worker.run
        close_in_worker = in_worker(forker, worker, cid)
        pid = fork_child(run, close_in_worker)
    except OSError as exc:
        forker.reports.append((wire.NOFORK, cid, exc.errno or 0))
        return
    finally:
        if channel is not None:
            channel.close()
        if worker is not None:
            worker.close_in_parent()
    forker.children.add(pid)


def in_worker(forker: Any, worker: Any, cid: int) -> Any:
    """What a fresh worker does first: tell the supervisor its pid (STARTED, on the
    forker's channel, which it still holds), then drop the forker's descriptors (the
    later workers' question channels of its record too: see Forker.unclaimed) and
    take its own signals. If the supervisor cannot hear it, nobody would know the
    worker: it exits."""

    def close_in_worker() -> None:
        try:
            forker.channel.send(wire.encode([(wire.STARTED, cid, os.getpid())]))
        except OSError:
            os._exit(0)
        forker.close_in_child()
        worker.install_signals()

    return close_in_worker
