"""The Python API: forkserve.Server with handlers of one's own."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

import forkserve
from tests.integration.conftest import ServerFactory
from tests.support import ServerProcess, connect, recv_all

ROOT = Path(__file__).parents[2]


def api_server(start_server: ServerFactory, handler: str) -> ServerProcess:
    """tests/data/api_server.py serving with the named handler."""
    script = ROOT / "tests" / "data" / "api_server.py"
    return start_server(command=[sys.executable, str(script), handler, "127.0.0.1:0"])


def test_readme_example_runs(start_server: ServerFactory) -> None:
    example = ROOT / "examples" / "upper.py"
    server = start_server(command=[sys.executable, str(example), "127.0.0.1:0"])
    with connect(server.port) as sock:
        sock.sendall(b"hello\nworld\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"HELLO\nWORLD\n"
    assert server.stop() == 0


def test_handler_exception_is_logged_and_the_server_keeps_serving(
    start_server: ServerFactory,
) -> None:
    server = api_server(start_server, "raises")
    for _ in range(2):
        with connect(server.port) as sock:
            assert recv_all(sock) == b"about to fail\n"
    ends = server.wait_event("end", count=2)
    assert [e["exit"] for e in ends] == ["1", "1"]
    log = server.log_text()
    assert log.count("ValueError: handler bug") == 2
    assert "Traceback" in log


def test_system_exit_sets_the_exit_code(start_server: ServerFactory) -> None:
    server = api_server(start_server, "exits_7")
    with connect(server.port) as sock:
        assert recv_all(sock) == b""
    (end,) = server.wait_event("end")
    assert end["exit"] == "7"


def test_handler_gets_the_peer_in_a_process_group_of_its_own(start_server: ServerFactory) -> None:
    server = api_server(start_server, "peer_and_pid")
    with connect(server.port) as sock:
        local = sock.getsockname()
        host, port, pid, pgrp = recv_all(sock).decode().split()
    assert (host, int(port)) == local
    assert pid == pgrp  # each child leads its own group
    assert int(pid) != server.pid


def test_server_rejects_bad_arguments() -> None:
    with pytest.raises(forkserve.UsageError):
        forkserve.Server(("127.0.0.1", 0), max_conns=0)
    with pytest.raises(forkserve.UsageError):
        forkserve.Server(("127.0.0.1", 0), grace=-1)
    with pytest.raises(forkserve.AddressError):
        forkserve.Server("[::1:80")


def test_server_binds_on_construction_and_closes() -> None:
    with forkserve.Server(("127.0.0.1", 0)) as server:
        assert server.port > 0
        with pytest.raises(forkserve.BindError, match="address already in use"):
            forkserve.Server(("127.0.0.1", server.port))
    assert server.listener.sock.fileno() == -1
