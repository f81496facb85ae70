"""Prefork mode's own behaviour: the pool grows, shrinks, recycles and heals."""

from __future__ import annotations

import os
import signal

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import connect, echo_roundtrip, recv_exactly, run_cli, wait_until


def test_worker_killed_mid_connection_is_replaced(start_server: ServerFactory) -> None:
    server = start_server("--mode", "prefork", "--min-spare", "1", "--max-spare", "2")
    with connect(server.port) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        (accept,) = server.wait_event("accept")
        os.kill(int(accept["pid"]), signal.SIGKILL)
        (end,) = server.wait_event("end", pid=accept["pid"])
        assert end["signal"] == "SIGKILL(9)"
        assert recv_exactly(sock, 1) == b""  # that connection is gone...
    (gone,) = server.wait_event("worker-exit", pid=accept["pid"])
    assert gone["reason"] == "crashed"
    for i in range(5):  # ...but the pool keeps serving
        assert echo_roundtrip(server.port, b"next %d" % i) == b"next %d" % i
    assert server.lasting_zombies() == []


def test_max_requests_recycles_workers(start_server: ServerFactory) -> None:
    server = start_server(
        "--mode", "prefork", "--min-spare", "1", "--max-spare", "1", "--max-requests", "3"
    )
    for i in range(9):
        assert echo_roundtrip(server.port, b"%d" % i) == b"%d" % i
    server.wait_event("end", count=9)
    recycled = server.wait_event("worker-exit", count=2, reason="max-requests")
    assert all(r["served"] == "3" and r["exit"] == "0" for r in recycled)
    served_by = {e["pid"] for e in server.events("accept")}
    assert len(served_by) >= 3  # nine connections, at most three per worker


def test_spares_grow_for_a_burst_and_settle_back(start_server: ServerFactory) -> None:
    server = start_server(
        "--mode", "prefork", "--min-spare", "2", "--max-spare", "3", "--max-workers", "20"
    )
    burst = [connect(server.port) for _ in range(12)]
    for sock in burst:
        sock.sendall(b"hi")
    for sock in burst:
        assert recv_exactly(sock, 2) == b"hi"
    accepts = server.wait_event("accept", count=12)
    assert accepts[-1]["conns"] == "12/20"
    # Everyone served, and min-spare idle workers soon ready beside them.
    wait_until(lambda: len(server.children()) >= 12 + 2, what="spares beside the busy")
    assert len(server.children()) <= 20
    for sock in burst:
        sock.close()
    server.wait_event("end", count=12)
    # Surplus idle workers retire after a second idle; the pool settles at max-spare.
    wait_until(lambda: len(server.children()) <= 3, timeout=10, what="the pool to shrink")
    assert len(server.children()) >= 2
    assert echo_roundtrip(server.port, b"still") == b"still"


def test_ttin_and_ttou_move_the_spare_range(start_server: ServerFactory) -> None:
    server = start_server("--mode", "prefork", "--min-spare", "2", "--max-spare", "3")
    wait_until(lambda: len(server.children()) >= 2, what="two spare workers")
    server.send_signal(signal.SIGTTIN)
    (pool,) = server.wait_event("pool")
    assert (pool["min_spare"], pool["max_spare"]) == ("3", "4")
    wait_until(lambda: len(server.children()) >= 3, what="a third spare worker")
    server.send_signal(signal.SIGTTOU)
    server.send_signal(signal.SIGTTOU)
    pools = server.wait_event("pool", count=3)
    assert (pools[-1]["min_spare"], pools[-1]["max_spare"]) == ("1", "2")
    wait_until(lambda: len(server.children()) <= 2, timeout=10, what="the pool to shrink")


def test_sigterm_drains_the_pool(start_server: ServerFactory) -> None:
    server = start_server("--mode", "prefork", "--min-spare", "3", "--max-spare", "5")
    busy = connect(server.port)
    busy.sendall(b"a")
    assert recv_exactly(busy, 1) == b"a"
    server.wait_event("accept")
    # Workers are forked by the forker, after the port is printed: wait for them.
    workers = wait_until(lambda: len(kids := server.children()) >= 3 and kids, what="workers")
    server.send_signal(signal.SIGTERM)
    server.wait_event("stop")
    with pytest.raises(ConnectionRefusedError):
        connect(server.port).close()
    busy.sendall(b"b")  # the busy worker finishes its connection
    assert recv_exactly(busy, 1) == b"b"
    busy.close()
    assert server.wait_exit() == 0
    exits = server.events("worker-exit")
    assert {str(pid) for pid in workers} <= {e["pid"] for e in exits}
    assert all(e["reason"] == "stopped" and e["exit"] == "0" for e in exits)
    assert server.leftovers() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-spare", "2"], "--min-spare needs --mode prefork"),
        (["--max-requests", "5"], "--max-requests needs --mode prefork"),
        (["--mode", "prefork", "--max-conns", "5"], "use --max-workers"),
        (["--mode", "prefork", "--min-spare", "5", "--max-spare", "2"], "min_spare <= max_spare"),
        (
            ["--mode", "prefork", "--max-workers", "2", "--max-spare", "3"],
            "max_spare <= max_workers",
        ),
        (["--mode", "spawn"], "invalid choice"),
    ],
)
def test_pool_options_are_checked(args: list[str], message: str) -> None:
    result = run_cli(["serve", "127.0.0.1:0", *args])
    assert result.returncode == 100
    assert message in result.stderr.decode()
    assert result.stderr.decode().count("\n") == 1
