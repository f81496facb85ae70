"""The prefork pool's decisions, without processes, on a fake clock (prefork.policy)."""

from __future__ import annotations

import pytest

from forkserve.prefork.policy import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    RETIRE_IDLE,
    PoolPolicy,
    WorkerState,
)


def workers(*states: str, since: float = 0.0) -> list[WorkerState]:
    pool = []
    for pid, state in enumerate(states, start=100):
        worker = WorkerState(pid, since)
        worker.state = state
        pool.append(worker)
    return pool


def test_a_shortfall_is_spawned_at_once() -> None:
    policy = PoolPolicy(min_spare=5, max_spare=8, max_workers=100, max_requests=0)
    assert policy.to_spawn(workers("idle", "starting", "busy"), 0.0) == 3


def test_the_batch_doubles_from_one_and_resets_once_spares_suffice() -> None:
    policy = PoolPolicy(min_spare=1, max_spare=4, max_workers=100, max_requests=0)
    busy: list[WorkerState] = []
    batches = []
    for _ in range(8):
        batch = policy.to_spawn(busy, 0.0)
        batches.append(batch)
        busy += workers(*["busy"] * batch)
    assert batches == [1, 2, 4, 8, 16, 32, 32, 5]  # capped by max_workers at the end
    assert policy.to_spawn(workers("idle"), 0.0) == 0
    assert policy.spawn_batch == 1


def test_no_spawn_past_max_workers_or_during_a_back_off() -> None:
    policy = PoolPolicy(min_spare=2, max_spare=4, max_workers=3, max_requests=0)
    assert policy.to_spawn(workers("busy", "busy", "busy"), 0.0) == 0
    policy.note_crash(10.0)
    assert policy.to_spawn([], 10.0 + BACKOFF_FIRST / 2) == 0
    assert policy.deadline([]) == pytest.approx(10.0 + BACKOFF_FIRST)
    assert policy.to_spawn([], 10.0 + BACKOFF_FIRST) == 2


def test_the_crash_back_off_doubles_up_to_its_cap_and_resets() -> None:
    policy = PoolPolicy(min_spare=1, max_spare=1, max_workers=4, max_requests=0)
    waits = []
    for _ in range(10):
        policy.note_crash(0.0)
        waits.append(policy.backoff_until)
    assert waits[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert waits[-1] == BACKOFF_MAX
    policy.crash_free()
    policy.note_crash(0.0)
    assert policy.backoff_until == pytest.approx(BACKOFF_FIRST)


def test_surplus_idle_workers_retire_after_being_idle_long_enough() -> None:
    policy = PoolPolicy(min_spare=1, max_spare=2, max_workers=10, max_requests=0)
    pool = workers("idle", "idle", "idle", "idle", since=5.0)
    pool[0].since = 4.0  # idle longest: the first to go
    assert policy.to_retire(pool, 4.0 + RETIRE_IDLE / 2) == []
    assert policy.deadline(pool) == 4.0 + RETIRE_IDLE
    assert policy.to_retire(pool, 4.0 + RETIRE_IDLE) == [pool[0]]
    assert policy.to_retire(pool, 5.0 + RETIRE_IDLE) == pool[:2]
    pool[0].stopping = pool[1].stopping = True  # asked to go: no longer spare
    assert policy.to_retire(pool, 9.0) == []
    assert policy.deadline(pool) is None


def test_why_a_worker_left() -> None:
    policy = PoolPolicy(min_spare=1, max_spare=2, max_workers=10, max_requests=3)
    (worker,) = workers("idle")
    assert policy.exit_reason(worker, 0, stopping=False) == "max-requests"
    assert policy.exit_reason(worker, 1, stopping=False) == "crashed"
    assert policy.exit_reason(worker, None, stopping=True) == "stopped"
    worker.stopping = True
    assert policy.exit_reason(worker, 1, stopping=False) == "stopped"


def test_a_worker_that_left_idle_may_have_taken_a_wakeup_with_it() -> None:
    policy = PoolPolicy(min_spare=1, max_spare=2, max_workers=10, max_requests=3)
    idle, busy = workers("idle", "busy")
    assert policy.was_waiting(idle)
    assert not policy.was_waiting(busy)
    idle.served = 3  # reached --max-requests: it left right after its connection
    assert not policy.was_waiting(idle)


def test_sigttin_and_sigttou_move_the_spare_range_and_keep_it_sound() -> None:
    policy = PoolPolicy(min_spare=1, max_spare=1, max_workers=10, max_requests=0)
    policy.resize(1)
    assert (policy.min_spare, policy.max_spare) == (2, 2)
    for _ in range(5):
        policy.resize(-1)
    assert (policy.min_spare, policy.max_spare) == (1, 1)


def test_a_reload_takes_the_pool_limits_by_name() -> None:
    policy = PoolPolicy(1, 2, 3, 4)
    policy.configure({"min_spare": 5, "max_spare": 6, "max_workers": 7, "max_requests": 8})
    assert (policy.min_spare, policy.max_spare, policy.max_workers, policy.max_requests) == (
        5,
        6,
        7,
        8,
    )
