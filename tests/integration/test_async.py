"""Async mode's own behaviour: worker processes with an event loop each (issue 16)."""

from __future__ import annotations

import os
import signal
import socket
from functools import partial
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import (
    ServerProcess,
    connect,
    echo_roundtrip,
    recv_all,
    recv_exactly,
    run_cli,
    wait_until,
)

HANDLERS = str(Path(__file__).resolve().parents[1] / "data" / "async_handlers.py")


def async_args(*args: str, workers: int = 2) -> list[str]:
    return ["--mode", "async", "--workers", str(workers), *args]


def test_echo_with_accept_and_end_lines(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--max-conns", "9"))
    wait_until(lambda: len(server.children()) == 2, what="two workers")
    workers = set(server.children())
    assert echo_roundtrip(server.port, b"hello async") == b"hello async"
    (accept,) = server.wait_event("accept")
    assert int(accept["pid"]) in workers
    assert accept["conn"] and accept["conns"] == "1/9"
    (end,) = server.wait_event("end", conn=accept["conn"])
    assert end["pid"] == accept["pid"] and end["exit"] == "0"
    assert end["peer"] == accept["peer"] and end["conns"] == "0/9"
    assert server.stop() == 0
    assert server.leftovers() == []


@pytest.mark.parametrize("name", ["daytime", "chargen", "discard"])
def test_builtins(start_server: ServerFactory, name: str) -> None:
    server = start_server(*async_args("--handler", name))
    with connect(server.port) as sock:
        if name == "discard":
            sock.sendall(b"dropped")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        elif name == "daytime":
            assert recv_all(sock).endswith(b"\r\n")
        else:
            line = recv_exactly(sock, 74)
            assert line.endswith(b"\r\n") and len(set(line[:72])) > 10
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"


def test_async_handler_from_a_file(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--handler", f"{HANDLERS}:upper"))
    with connect(server.port) as sock:
        sock.sendall(b"one\ntwo\n")
        assert recv_exactly(sock, 8) == b"ONE\nTWO\n"


def test_many_connections_at_once_share_two_workers(start_server: ServerFactory) -> None:
    server = start_server(*async_args())
    socks = [connect(server.port) for _ in range(50)]
    for i, sock in enumerate(socks):
        sock.sendall(b"%03d" % i)
    for i, sock in enumerate(socks):
        assert recv_exactly(sock, 3) == b"%03d" % i
    accepts = server.wait_event("accept", count=50)
    assert len({(a["pid"], a["conn"]) for a in accepts}) == 50
    assert len(server.children()) == 2
    for sock in socks:
        sock.close()
    server.wait_event("end", count=50)


def test_handler_error_ends_only_its_connection(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--handler", f"{HANDLERS}:boom", workers=1))
    with connect(server.port) as calm, connect(server.port) as failing:
        server.wait_event("accept", count=2)
        failing.sendall(b"go\n")
        assert recv_all(failing) == b""
        (error,) = server.wait_event("handler-error")
        assert "async boom" in error["error"]
        (end,) = server.wait_event("end")
        assert end["exit"] == "1"
        assert "Traceback" in server.log_text()
        calm.sendall(b"still\n")  # the same worker's other connection lives on
        assert recv_all(calm) == b""
        server.wait_event("end", count=2)


def test_max_conns_is_the_total_across_workers(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--max-conns", "3"))
    held = [connect(server.port) for _ in range(3)]
    for sock in held:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    server.wait_event("accept", count=3)
    waiting = connect(server.port, timeout=0.5)
    waiting.sendall(b"queued")
    with pytest.raises(TimeoutError):
        waiting.recv(10)
    assert len(server.events("accept")) == 3
    held[0].close()
    waiting.settimeout(15)
    assert recv_exactly(waiting, 6) == b"queued"
    accepts = server.wait_event("accept", count=4)
    assert accepts[3]["conns"] == "3/3"
    for sock in [waiting, *held[1:]]:
        sock.close()
    server.wait_event("end", count=4)


def test_killed_worker_ends_its_connections_and_is_replaced(start_server: ServerFactory) -> None:
    server = start_server(*async_args())
    socks = [connect(server.port) for _ in range(6)]
    for sock in socks:
        sock.sendall(b"a")
        assert recv_exactly(sock, 1) == b"a"
    accepts = server.wait_event("accept", count=6)
    victim = accepts[0]["pid"]
    theirs = sorted(a["conn"] for a in accepts if a["pid"] == victim)
    os.kill(int(victim), signal.SIGKILL)
    ends = server.wait_event("end", count=len(theirs), pid=victim)
    assert sorted(e["conn"] for e in ends) == theirs
    assert all(e["signal"] == "SIGKILL(9)" for e in ends)
    (gone,) = server.wait_event("worker-exit", pid=victim)
    assert gone["reason"] == "crashed"
    wait_until(lambda: len(server.children()) == 2, what="a replacement worker")
    served_by = {a["peer"]: a["pid"] for a in accepts}
    for sock in socks:
        host, port = sock.getsockname()[:2]
        if served_by[f"{host}:{port}"] != victim:  # the other worker's connections live on
            sock.sendall(b"b")
            assert recv_exactly(sock, 1) == b"b"
        sock.close()
    for i in range(4):
        assert echo_roundtrip(server.port, b"next %d" % i) == b"next %d" % i
    assert server.zombies() == []


def test_sigterm_lets_connections_finish(start_server: ServerFactory) -> None:
    server = start_server(*async_args())
    sock = connect(server.port)
    sock.sendall(b"first")
    assert recv_exactly(sock, 5) == b"first"
    server.send_signal(signal.SIGTERM)
    (stop,) = server.wait_event("stop")
    assert stop["mode"] == "graceful"
    with pytest.raises(ConnectionRefusedError):
        connect(server.port).close()
    sock.sendall(b"second")
    assert recv_exactly(sock, 6) == b"second"
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock) == b""
    sock.close()
    assert server.wait_exit() == 0
    assert server.leftovers() == []


def test_grace_expiry_cancels_handlers(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--grace", "0.3"))
    with connect(server.port) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        server.send_signal(signal.SIGTERM)
        (end,) = server.wait_event("end")
        assert end["signal"] == "SIGTERM(15)"
        assert server.wait_exit() == 0
    assert server.events("terminate")
    assert server.leftovers() == []


def test_sigquit_stops_at_once(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--grace", "60"))
    socks = [connect(server.port) for _ in range(3)]
    server.wait_event("accept", count=3)
    server.send_signal(signal.SIGQUIT)
    assert server.wait_exit() == 0
    assert len(server.events("end", signal="SIGTERM(15)")) == 3
    assert server.leftovers() == []
    for sock in socks:
        sock.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--handler", f"{HANDLERS}:sync_echo", "--mode", "async"], "needs an async def"),
        (["--handler", f"{HANDLERS}:upper"], "needs --mode async"),
        (["--handler", f"{HANDLERS}:upper", "--mode", "prefork"], "needs --mode async"),
        (["--workers", "2"], "--workers needs --mode async"),
        (["--mode", "async", "--max-workers", "2"], "--max-workers needs --mode prefork"),
    ],
)
def test_handler_of_the_other_kind_is_a_usage_error(args: list[str], message: str) -> None:
    result = run_cli(["serve", "127.0.0.1:0", *args])
    assert result.returncode == 100
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_handler_that_blocks_its_loop_is_logged(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--handler", f"{HANDLERS}:nap", workers=1))
    with connect(server.port) as sock:
        sock.sendall(b"sleep\n")
        assert recv_exactly(sock, 5) == b"woke\n"
    (blocked,) = server.wait_event("loop-blocked")
    assert float(blocked["seconds"]) >= 0.9  # the handler's time.sleep(1)
    assert blocked["pid"] == server.events("accept")[0]["pid"]


def test_per_ip_holds_across_workers(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--per-ip", "2", "--reject-message", "busy\\n"))
    held = [connect(server.port) for _ in range(2)]
    for sock in held:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
    for _ in range(3):  # whichever worker takes it, the supervisor counts both
        with connect(server.port) as extra:
            assert recv_all(extra) == b"busy\n"
    rejects = server.wait_event("reject", count=3)
    assert all(r["reason"] == "per-ip" for r in rejects)
    held[0].close()
    server.wait_event("end")
    assert echo_roundtrip(server.port, b"room again") == b"room again"
    held[1].close()


def test_sigttin_and_sigttou_move_the_worker_count(start_server: ServerFactory) -> None:
    server = start_server(*async_args(workers=2))
    wait_until(lambda: len(server.children()) == 2, what="two workers")
    server.send_signal(signal.SIGTTIN)
    (pool,) = server.wait_event("pool")
    assert pool["workers"] == "3"
    wait_until(lambda: len(server.children()) == 3, what="a third worker")
    server.send_signal(signal.SIGTTOU)
    server.send_signal(signal.SIGTTOU)
    server.wait_event("pool", count=3)
    wait_until(lambda: len(server.children()) == 1, what="one worker left")
    assert echo_roundtrip(server.port, b"one") == b"one"


def test_proxy_header_names_the_client_in_lines_and_limits(start_server: ServerFactory) -> None:
    server = start_server(*async_args("--proxy-protocol", "v1", "--per-ip", "1"))
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
    with connect(server.port) as first:
        first.sendall(header + b"after the header")
        assert recv_exactly(first, 16) == b"after the header"  # not a byte of it echoed
        (accept,) = server.wait_event("accept")
        assert accept["peer"] == "192.0.2.7:5555"
        with connect(server.port) as second:  # the same advertised client: over --per-ip
            second.sendall(header.replace(b"5555", b"5556"))
            assert recv_all(second) == b""
        (reject,) = server.wait_event("reject")
        assert (reject["peer"], reject["reason"]) == ("192.0.2.7:5556", "per-ip")
    (end,) = server.wait_event("end")
    assert end["peer"] == "192.0.2.7:5555"


def replacement(server: ServerProcess, gone: int) -> list[int]:
    return [pid for pid in server.children() if pid != gone]


def test_a_killed_workers_unreported_tokens_come_back(start_server: ServerFactory) -> None:
    """--max-conns: a worker SIGKILLed while it holds tokens for connections it has
    not reported yet (here waiting for their PROXY headers) gives every token back."""
    server = start_server(*async_args("--proxy-protocol", "v1", "--max-conns", "3", workers=1))
    (worker,) = wait_until(server.children, what="the worker")
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 %d 80\r\n"
    for round_ in range(2):  # twice: the capacity does not shrink round by round
        silent = [connect(server.port) for _ in range(2)]  # tokens taken, no header yet
        with connect(server.port) as told:  # queued behind them: accepted after them
            told.sendall(header % 5000 + b"x")
            assert recv_exactly(told, 1) == b"x"
            server.wait_event("accept", count=round_ + 1)
            os.kill(worker, signal.SIGKILL)
            server.wait_event("worker-exit", count=round_ + 1)
        for sock in silent:
            sock.close()
        (worker,) = wait_until(partial(replacement, server, worker), what="a replacement")
    clients = [connect(server.port) for _ in range(3)]
    for i, sock in enumerate(clients):
        sock.sendall(header % (6000 + i) + b"full %d" % i)
    for i, sock in enumerate(clients):  # all three at once: --max-conns is whole again
        assert recv_exactly(sock, 6) == b"full %d" % i
    accepts = server.wait_event("accept", count=5)
    assert accepts[-1]["conns"] == "3/3"
    for sock in clients:
        sock.close()


def test_handler_sees_the_advertised_client_and_its_rule_variables(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Behind PROXY the writer's peername is the client the header names (as a sync
    handler's peer is), and get_extra_info("env") holds the variables its rule set."""
    rules = tmp_path / "edge.rules"
    rules.write_text('192.0.2.7:allow,ROLE="edge, one"\n198.51.100.0/24:allow\n:deny\n')
    handler = ("--handler", f"{HANDLERS}:peer_env")
    server = start_server(*async_args("--proxy-protocol", "v1", "--rules", str(rules), *handler))
    for client, line in [
        (b"192.0.2.7 127.0.0.1 5555", b"192.0.2.7:5555 edge, one\n"),
        (b"198.51.100.4 127.0.0.1 6000", b"198.51.100.4:6000 -\n"),
    ]:
        with connect(server.port) as sock:
            sock.sendall(b"PROXY TCP4 " + client + b" 80\r\nafter")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == line + b"after"
    rules.write_text("127.0.0.1:allow,ROLE=local\n:deny\n")
    direct = start_server(*async_args("--rules", str(rules), *handler))
    with connect(direct.port) as sock:
        sock.shutdown(socket.SHUT_WR)
        host, port = sock.getsockname()[:2]
        assert recv_all(sock) == f"{host}:{port} local\n".encode()


def test_full_capacity_after_workers_killed_under_load(start_server: ServerFactory) -> None:
    """--max-conns 4, two workers: rounds of twice as many clients as the limit, every
    other one silent before its PROXY header, then both workers SIGKILLed while they
    hold their tokens; afterwards all 4 slots serve at once."""
    server = start_server(*async_args("--proxy-protocol", "v1", "--max-conns", "4"))
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 %d 80\r\n"
    workers: list[int] = wait_until(partial(replacements, server, 0), what="two workers")
    for round_ in range(3):
        socks = [connect(server.port) for _ in range(8)]  # 4 served, 4 in the backlog
        for i, sock in enumerate(socks[::2]):
            sock.sendall(header % (5000 + i) + b"x")
        # The 1st and 3rd were accepted, so the silent 2nd was too: it holds a token.
        server.wait_event("accept", count=2 * (round_ + 1))
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        server.wait_event("worker-exit", count=2 * (round_ + 1))
        for sock in socks:
            sock.close()
        workers = wait_until(partial(replacements, server, *workers), what="new workers")
    clients = [connect(server.port) for _ in range(4)]
    for i, sock in enumerate(clients):
        sock.sendall(header % (6000 + i) + b"full %d" % i)
    for i, sock in enumerate(clients):  # all four at once: --max-conns is whole again
        assert recv_exactly(sock, 6) == b"full %d" % i
    for sock in clients:
        sock.close()


def replacements(server: ServerProcess, *gone: int) -> list[int]:
    """Two workers, none of ``gone`` among them."""
    pids = server.children()
    return pids if len(pids) == 2 and not set(gone) & set(pids) else []
