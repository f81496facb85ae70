"""``forkserve bench`` end to end: against forkserve, and against broken echo servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import FORKSERVE, WAIT, run_cli

# Small and short: the whole file runs in seconds. The machine is shared, so waits
# that should not expire get the default 5 s; only tests that wait for a fault to
# time out (a missing byte, a missing EOF) shorten --timeout, with FAULT.
QUICK = ["-d", "1"]
FAULT = ["--timeout", "1"]
MODE_ARGS = {
    "rate": ["-c", "2"],
    "pingpong": ["-c", "2"],
    "bulk": ["-c", "2", "-n", "2M"],
    "hold": ["-c", "20", "-s", "100"],
}


def bench(port: int, *args: str) -> tuple[int, str]:
    """Run ``forkserve bench`` against 127.0.0.1:port; exit code and all output."""
    done = run_cli(["bench", "127.0.0.1", str(port), *QUICK, *args], timeout=60)
    return done.returncode, (done.stdout + done.stderr).decode()


@pytest.mark.parametrize("workload", list(MODE_ARGS))
def test_every_workload_verifies_against_forkserve(serve: ServerFactory, workload: str) -> None:
    server = serve("-q")
    code, output = bench(server.port, "--mode", workload, *MODE_ARGS[workload])
    assert code == 0, output
    assert "every byte verified" in output


@pytest.mark.parametrize("workload", list(MODE_ARGS))
def test_json_has_the_documented_fields(start_server: ServerFactory, workload: str) -> None:
    server = start_server("-q")
    argv = ["bench", "127.0.0.1", str(server.port), *QUICK, "-m", workload, "--json"]
    done = run_cli([*argv, *MODE_ARGS[workload]], timeout=60)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {
        "mode", "target", "connections", "message_size", "bytes_per_connection", "duration",
        "elapsed", "unit", "operations", "rate", "verified_bytes", "mb_per_s", "latency_us",
        "established", "verified_start", "verified_end", "errors", "error_count", "problems",
        "ok", "exit_code",
    }  # fmt: skip
    assert data["mode"] == workload
    assert data["ok"] is True
    assert data["error_count"] == 0
    assert data["operations"] > 0
    assert data["target"] == f"127.0.0.1:{server.port}"
    if workload in ("rate", "pingpong"):
        assert set(data["latency_us"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    if workload == "bulk":
        assert data["verified_bytes"] == 2 * 2 * 1024 * 1024
        assert data["mb_per_s"] > 0
    if workload == "hold":
        assert data["established"] == data["verified_start"] == data["verified_end"] == 20


# -- broken servers ------------------------------------------------------------------------


class FaultyEcho:
    """A threaded echo server with one fault, in the test process.

    ``handle(conn)`` serves one connection; the server closes it afterwards.
    Resource handling: ``close()`` stops accepting, wakes and joins every thread.
    """

    def __init__(self, handle: Callable[[socket.socket, threading.Event], None]) -> None:
        self.handle = handle
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self.accept_loop, daemon=True)
        self.acceptor.start()

    def accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(WAIT)
            thread = threading.Thread(target=self.serve_one, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def serve_one(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handle(conn, self.stop)
            except OSError:
                pass  # the client gave up on us: that is what these tests provoke

    def close(self) -> None:
        self.stop.set()
        self.acceptor.join(WAIT)
        self.listener.close()
        for thread in self.threads:
            thread.join(WAIT)


def flip_byte(at: int) -> Callable[[socket.socket, threading.Event], None]:
    """Echo, but with byte ``at`` of the connection's stream inverted."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        seen = 0
        while data := conn.recv(65536):
            if seen <= at < seen + len(data):
                changed = bytearray(data)
                changed[at - seen] ^= 0xFF
                data = bytes(changed)
            seen += len(data)
            conn.sendall(data)

    return handle


def drop_last_byte(conn: socket.socket, stop: threading.Event) -> None:
    """Echo all but the last byte received so far; at EOF, close without it."""
    held = b""
    while data := conn.recv(65536):
        pending = held + data
        conn.sendall(pending[:-1])
        held = pending[-1:]


def never_close(conn: socket.socket, stop: threading.Event) -> None:
    """Echo everything, then ignore the client's EOF until the test ends."""
    while data := conn.recv(65536):
        conn.sendall(data)
    stop.wait(WAIT)


@pytest.fixture
def faulty() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], None]], int]]:
    servers: list[FaultyEcho] = []

    def start(handle: Callable[[socket.socket, threading.Event], None]) -> int:
        servers.append(FaultyEcho(handle))
        port: int = servers[-1].port
        return port

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("workload", "at"),
    [("bulk", 100_000), ("pingpong", 200), ("rate", 5), ("hold", 70)],
)
def test_a_flipped_byte_is_a_mismatch_at_its_offset(
    faulty: Callable[..., int], workload: str, at: int
) -> None:
    args = {"bulk": ["-n", "1M"], "pingpong": ["-c", "1"], "rate": ["-c", "1"]}
    hold_args = ["-c", "3", "-s", "64"]
    code, output = bench(faulty(flip_byte(at)), "-m", workload, *args.get(workload, hold_args))
    assert code == 1, output
    assert f"mismatch at offset {at}" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("workload", ["bulk", "rate", "pingpong"])
def test_a_dropped_last_byte_is_a_short_echo(faulty: Callable[..., int], workload: str) -> None:
    code, output = bench(faulty(drop_last_byte), "-m", workload, "-c", "1", "-n", "1M", *FAULT)
    assert code == 1, output
    assert "short echo" in output
    if workload == "bulk":
        assert f"short echo at offset {(1 << 20) - 1}: EOF" in output


@pytest.mark.parametrize("workload", ["bulk", "pingpong", "hold"])
def test_no_close_after_eof_is_a_missing_eof(faulty: Callable[..., int], workload: str) -> None:
    code, output = bench(faulty(never_close), "-m", workload, "-c", "1", "-n", "64K", *FAULT)
    assert code == 1, output
    assert "missing EOF" in output


def test_nothing_listening_exits_111() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Bound, not listening: connecting is refused for sure, and the port stays ours.
        code, output = bench(port, "-m", "rate")
    assert code == 111, output
    assert "ECONNREFUSED" in output
    assert output.count("\n") == 1


def test_self_connection_is_an_error_not_an_echo() -> None:
    from forkserve.cli.bench.verify import SELF_CONNECT, VerifyError
    from forkserve.cli.bench.work import check_not_self

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(WAIT)
        # TCP simultaneous open: a socket connecting to its own address succeeds.
        sock.connect(sock.getsockname())
        with pytest.raises(VerifyError) as caught:
            check_not_self(sock, "c0")
    assert caught.value.problem.kind == SELF_CONNECT


@pytest.mark.parametrize(
    "args",
    [
        ["-c", "0"],
        ["--mode", "nope"],
        ["-s", "0"],
        ["-s", "1T"],
        ["-d", "-1"],
        ["--timeout", "0"],
        ["-c", "5000", "-m", "rate"],
    ],
)
def test_usage_errors_exit_100_in_one_line(args: list[str]) -> None:
    done = run_cli(["bench", "127.0.0.1", "9", *args])
    assert done.returncode == 100, done
    assert done.stderr.decode().count("\n") == 1
    assert done.stdout == b""


@pytest.mark.parametrize("target", [["127.0.0.1", "abc"], ["127.0.0.1", "0"], ["no host!", "9"]])
def test_bad_targets_exit_100(target: list[str]) -> None:
    done = run_cli(["bench", *target])
    assert done.returncode == 100, done
    assert b"Traceback" not in done.stderr


def test_hold_beyond_the_descriptor_limit_is_held_by_shards(start_server: ServerFactory) -> None:
    """More connections than one process may open (a hard RLIMIT_NOFILE that cannot
    be raised): hold splits them over processes, and every one is verified."""
    server = start_server("-q", "--mode", "async", "--workers", "2")
    command = ["prlimit", "--nofile=300:300", *FORKSERVE]
    argv = ["bench", "127.0.0.1", str(server.port), *QUICK, "-m", "hold", "-c", "500", "--json"]
    done = run_cli(argv, timeout=60, command=command)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["established"] == data["verified_start"] == data["verified_end"] == 500
