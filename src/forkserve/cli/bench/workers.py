"""The client processes of ``forkserve bench``: fork them, start them together, collect.

One process per rate worker, pingpong connection or bulk connection (the loops in
``cli.bench.work``), so the client uses every core and no loop waits for another. They
are forked (no re-import, no pickling of the configuration) before any thread starts
in the parent, wait at a barrier after their set-up (pingpong and bulk connect first),
and send their ``Tally`` back through a pipe when done.

Resource handling: ``run_workers`` reaps every process it started, on every path; a
process that outlives its time limit is killed (SIGKILL) and reported.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from threading import BrokenBarrierError
from typing import TYPE_CHECKING, Any

from forkserve.cli.bench.stats import Tally
from forkserve.cli.bench.verify import WORKER, Problem
from forkserve.cli.bench.work import Config, Counters, bulk, pingpong, rate

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier

Loop = Callable[[Config, int, Callable[[], float], Counters], Tally]
LOOPS: dict[str, Loop] = {"rate": rate, "pingpong": pingpong, "bulk": bulk}
POLL = 0.1
# Time for every worker to set up (fork, connect) before the common start.
SETUP_SLACK = 10.0


def _child(
    loop: Loop, config: Config, index: int, *, barrier: Barrier, shared: Any, out: Connection
) -> None:
    """A worker process's body: run the loop, send the tally (or the bug) back."""
    # Ctrl-C reaches the whole process group: the parent alone decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started: list[float] = []

    def start() -> float:
        try:
            barrier.wait(config.timeout + SETUP_SLACK)
        except BrokenBarrierError:
            pass  # the parent gave up on another worker; run anyway, it will stop us
        started.append(time.monotonic())
        return started[0] + config.duration

    try:
        tally = loop(config, index, start, Counters(shared, index))
    except Exception as exc:  # noqa: BLE001 - a bug in a loop is reported, not hidden
        tally = Tally()
        tally.add_problem(Problem(WORKER, f"w{index}", None, f"{type(exc).__name__}: {exc}"))
    out.send((tally, time.monotonic()))
    out.close()


def run_workers(
    config: Config, on_progress: Callable[[int, int, int, float], None] | None
) -> tuple[Tally, float]:
    """Run ``config.conns`` workers of ``config.mode``; return the merged tally and
    the seconds from the common start to the last worker's end."""
    ctx = multiprocessing.get_context("fork")
    n = config.conns
    shared = ctx.RawArray("q", 3 * n)
    barrier = ctx.Barrier(n + 1)
    procs: list[BaseProcess] = []
    pipes: dict[Connection, int] = {}
    try:
        for index in range(n):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child,
                args=(LOOPS[config.mode], config, index),
                kwargs={"barrier": barrier, "shared": shared, "out": writer},
                name=f"bench-{config.mode}-{index}",
                daemon=True,
            )
            proc.start()
            writer.close()
            procs.append(proc)
            pipes[reader] = index
        try:
            barrier.wait(config.timeout + SETUP_SLACK)
        except BrokenBarrierError:
            pass  # a worker died in set-up; it is reported below
        began = time.monotonic()
        return _collect(config, procs, pipes, shared, began=began, on_progress=on_progress)
    finally:
        for worker in procs:
            if worker.is_alive():
                worker.kill()
            worker.join()
        for reader in pipes:
            reader.close()


def _collect(
    config: Config,
    procs: list[BaseProcess],
    pipes: dict[Connection, int],
    shared: Any,
    *,
    began: float,
    on_progress: Callable[[int, int, int, float], None] | None,
) -> tuple[Tally, float]:
    """Wait for every worker's tally, reporting progress, within a time limit.

    A worker that dies without sending closes its pipe (the parent holds no copy of
    the writing end), so waiting on the pipes alone sees every ending.
    """
    total = Tally()
    finished = began
    waiting = dict(pipes)
    limit = _time_limit(config)
    last_change, last_counts = time.monotonic(), list(shared)
    while waiting:
        for reader in wait(list(waiting), POLL):
            assert isinstance(reader, Connection)
            index = waiting.pop(reader)
            try:
                tally, ended = reader.recv()
            except EOFError:
                procs[index].join(config.timeout)
                detail = f"exited with status {procs[index].exitcode} before reporting"
                total.add_problem(Problem(WORKER, f"w{index}", None, detail))
                continue
            total.merge(tally)
            finished = max(finished, ended)
        now = time.monotonic()
        counts = list(shared)
        if counts != last_counts:
            last_change, last_counts = now, counts
        if on_progress is not None:
            on_progress(sum(counts[0::3]), sum(counts[1::3]), sum(counts[2::3]), now - began)
        stalled = config.mode == "bulk" and now - last_change > 3 * config.timeout + 5
        if waiting and (now - began > limit or stalled):
            for index in sorted(waiting.values()):
                total.add_problem(Problem(WORKER, f"w{index}", None, "stuck: killed"))
                procs[index].kill()
            break
    return total, finished - began


def _time_limit(config: Config) -> float:
    """How long a run may take before its stuck workers are killed.

    rate and pingpong end at the deadline plus one operation, each wait of which is
    bounded by --timeout; bulk has no duration, only the no-progress limit.
    """
    if config.mode == "bulk":
        return float("inf")
    return config.duration + 4 * config.timeout + 5
