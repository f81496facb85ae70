"""Prefork workers forked from the forker (forker.process), not from the supervisor.

Each worker then carries the forker's small image (the child-side code and the
handler), not the supervisor's; the supervisor keeps its table of workers by pid
and signals them through the forker. These tests check who a worker's parent is,
what it holds, and what happens when the forker dies.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.integration.test_forker import one_forker
from tests.support import (
    connect,
    echo_roundtrip,
    recv_exactly,
    wait_until,
)

LEAN = str(Path(__file__).parents[1] / "data" / "lean_handler.py") + ":handle"
PREFORK = ("--mode", "prefork", "--min-spare", "2", "--max-spare", "4")


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def answer(port: int) -> bytes:
    with connect(port) as sock:
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_workers_are_the_forkers_children(start_server: ServerFactory) -> None:
    server = start_server(*PREFORK, "--handler", LEAN)
    forker = one_forker(server)
    assert answer(server.port) == b"none"  # no supervisor module in the worker
    pid = int(server.wait_event("accept")[0]["pid"])
    assert parent_of(pid) == forker
    assert parent_of(forker) == server.pid
    server.wait_event("end", pid=pid)
    assert server.stop() == 0


def test_forker_killed_workers_serve_on(start_server: ServerFactory) -> None:
    """SIGKILL to the forker: its workers become the supervisor's (a subreaper),
    serve on, are reaped and ended as any child; a new forker forks the next ones."""
    server = start_server(*PREFORK, "--max-requests", "2")
    old = one_forker(server)
    with connect(server.port) as held:
        held.sendall(b"a")
        assert recv_exactly(held, 1) == b"a"
        busy = int(server.wait_event("accept")[0]["pid"])
        os.kill(old, signal.SIGKILL)
        died = server.wait_event("forker-died", pid=old)[0]
        assert died["signal"] == "SIGKILL(9)"
        held.sendall(b"b")  # the orphan still serves its client
        assert recv_exactly(held, 1) == b"b"
        assert parent_of(busy) == server.pid
        new = one_forker(server)
        assert new != old
        # --max-requests 2: workers leave and are replaced, by the new forker.
        for i in range(12):
            assert echo_roundtrip(server.port, b"n%d" % i) == b"n%d" % i
    server.wait_event("end", pid=busy)
    fresh = wait_until(
        lambda: [p for p in server.children() if parent_of(p) == new], what="a new worker"
    )
    assert fresh
    assert not server.zombies()
    assert server.stop() == 0
    # The orphan was ended and reaped by the supervisor, as any child.
    assert server.events("worker-exit", pid=busy)
    assert not server.leftovers()


def test_reload_starts_a_new_forker_for_new_workers(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A reload that changes what workers hold: a new forker forks the new workers
    (new settings); the old one leaves once its workers have retired."""
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    server = start_server(*PREFORK, "--config", str(config))
    old = one_forker(server)
    with connect(server.port) as held:
        assert recv_exactly(held, 4) == b"one\n"
        config.write_text('banner = "two\\n"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_event("reload", changed="banner")
        new = wait_until(lambda: [p for p in server.forkers() if p != old], what="a forker")[0]
        with connect(server.port) as fresh:
            assert recv_exactly(fresh, 4) == b"two\n"
            pid = int(server.wait_event("accept", 2)[-1]["pid"])
            assert parent_of(pid) == new
        held.sendall(b"h")
        assert recv_exactly(held, 1) == b"h"  # the old worker serves its client on
    wait_until(lambda: old not in server.forkers(), what="the old forker to exit")
    server.wait_event("end", 2)
    assert server.stop() == 0


def test_lifetime_signals_go_through_the_forker(start_server: ServerFactory) -> None:
    server = start_server(*PREFORK, "--max-lifetime", "0.5")
    one_forker(server)
    with connect(server.port) as sock:
        sock.sendall(b"z")
        assert recv_exactly(sock, 1) == b"z"
        pid = int(server.wait_event("accept")[0]["pid"])
        end = server.wait_event("end", pid=pid)[0]
        assert end["signal"] == "SIGTERM(15)"
        assert sock.recv(1) == b""
    assert server.stop() == 0


def test_without_a_forker_the_supervisor_forks_workers(start_server: ServerFactory) -> None:
    """FORKSERVE_FORKER=0 (as a handler that cannot be named to a fresh process):
    workers are forked by the supervisor, as before the forker."""
    env = {**os.environ, "FORKSERVE_FORKER": "0"}
    server = start_server(*PREFORK, "--handler", LEAN, env=env)
    assert answer(server.port) != b"none"  # the supervisor's modules came along
    pid = int(server.wait_event("accept")[0]["pid"])
    assert parent_of(pid) == server.pid
    assert server.forkers() == []
    assert server.stop() == 0
