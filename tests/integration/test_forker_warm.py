"""The forker runs the child-side path before it serves (forker.process.warm):
with the built-in echo standing in, never the user's handler, never the prelude's
limits. These check the "never"s from outside."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.support import connect, echo_roundtrip, recv_exactly, wait_until


def test_warm_up_never_runs_the_users_handler(start_server: ServerFactory, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    handler = tmp_path / "counting.py"
    handler.write_text(
        f"CALLS = {str(calls)!r}\n"
        "def handle(conn, peer):\n"
        "    with open(CALLS, 'a') as out:\n"
        "        out.write('call\\n')\n"
        "    while data := conn.recv(4096):\n"
        "        conn.sendall(data)\n"
    )
    server = start_server("--handler", f"{handler}:handle")
    wait_until(server.forkers, what="a forker")
    assert not calls.exists()  # started and warmed, nobody served yet
    assert echo_roundtrip(server.port, b"one") == b"one"
    server.wait_event("end")
    assert calls.read_text() == "call\n"


def open_files_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return " ".join(line.split()[3:5])
    raise AssertionError(f"no open files limit for {pid}")


def test_warm_up_never_applies_the_childrens_limits_to_the_forker(
    start_server: ServerFactory,
) -> None:
    server = start_server("--limit-nofile", "64")
    forker = int(wait_until(server.forkers, what="a forker")[0])
    assert open_files_limit(forker) == open_files_limit(server.pid) != "64 64"
    with connect(server.port) as held:
        held.sendall(b"x")
        assert recv_exactly(held, 1) == b"x"
        child = int(server.wait_event("accept")[0]["pid"])
        assert open_files_limit(child) == "64 64"
    assert open_files_limit(forker) == open_files_limit(server.pid)
