"""The soak's "zombies left" check (tests.support.lasting_zombies) counts only what a
server leaves unreaped: not a child caught in the moment between its exit and its
reap, not two processes that had the same pid, and still a zombie nobody reaps."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

from tests.support import children_of, lasting_zombies, start_time, still_running, wait_until


def looks(*samples: list[tuple[int, int]]) -> Callable[[], list[tuple[int, int]]]:
    """``sample`` for the check: each call the next of ``samples``, then the last again."""
    queue: Iterator[list[tuple[int, int]]] = iter(samples)
    last: list[tuple[int, int]] = []

    def sample() -> list[tuple[int, int]]:
        nonlocal last
        last = next(queue, last)
        return last

    return sample


def ticking(step: float) -> Callable[[], float]:
    """A clock that moves ``step`` seconds at each reading."""
    now = -step

    def clock() -> float:
        nonlocal now
        now += step
        return now

    return clock


def test_a_zombie_reaped_a_moment_later_is_not_left() -> None:
    # The flake of issue 14's stop (reproduced: the soak's chaos-fork reported
    # "1 zombies left" for a pid whose end line followed 20 ms after its accept): one
    # look showed none, the next caught the last connection's child just exiting.
    sample = looks([], [(1226, 100)], [(1226, 100)], [])
    assert lasting_zombies(sample, settle=5, clock=ticking(0.01), pause=lambda: None) == []


def test_a_zombie_nobody_reaps_is_left() -> None:
    sample = looks([(7, 100), (8, 100)], [(7, 100)])
    assert lasting_zombies(sample, settle=5, clock=ticking(1), pause=lambda: None) == [7]


def test_one_pid_for_two_processes_is_two_zombies() -> None:
    # pid_max is 32768 here: two children a moment apart can get the same pid. Each
    # is reaped in a moment; neither is left, though the pid is a zombie every look.
    sample = looks(*[[(7, start)] for start in range(100, 120)])
    assert lasting_zombies(sample, settle=5, clock=ticking(1), pause=lambda: None) == []


def test_a_real_unreaped_child_is_found() -> None:
    """A real parent that never reaps: its child is reported, by pid and start time."""
    code = "import os, sys\nif os.fork() == 0: os._exit(0)\nsys.stdin.read()"
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:

        def zombie_ids() -> list[tuple[int, int]]:
            found = []
            for pid, state in children_of(parent.pid):
                start = start_time(pid)
                if state == "Z" and start is not None:
                    found.append((pid, start))
            return found

        (zombie,) = wait_until(zombie_ids, what="the child to exit")
        assert lasting_zombies(zombie_ids, settle=0.2) == [zombie[0]]
    finally:
        assert parent.stdin is not None
        parent.stdin.close()
        parent.wait(15)


def test_a_pid_now_someone_elses_is_not_left_behind() -> None:
    """A descendant seen during a test, reaped since, whose pid another process got
    (another suite's: pid_max is 32768 here): not reported, so never killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        start = start_time(child.pid)
        assert start is not None
        assert still_running({(child.pid, start)}) == [child.pid]
        # The same pid with another start time: the process seen is gone, this is another.
        assert still_running({(child.pid, start - 1)}) == []
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(15)
    assert still_running({(child.pid, start)}) == []
