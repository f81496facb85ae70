"""The fork-per-connection server against the real CLI: the seed's scenario and each
of the seed's defects, proven absent."""

from __future__ import annotations

import os
import platform
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import (
    connect,
    echo_roundtrip,
    limit_args,
    recv_all,
    recv_exactly,
    run_cli,
    wait_until,
)


def test_three_clients_three_children_then_none(start_server: ServerFactory) -> None:
    """The seed's own scenario: three clients, three children beside the parent."""
    server = start_server()
    clients = [connect(server.port) for _ in range(3)]
    server.wait_event("accept", count=3)
    assert len(server.children()) == 3
    for sock in clients:
        sock.sendall(b"ping\n")
        assert recv_exactly(sock, 5) == b"ping\n"
        sock.close()
    ends = server.wait_event("end", count=3)
    assert all(e["exit"] == "0" for e in ends)
    assert ends[-1]["conns"] == "0/1000"
    assert server.children() == []
    assert server.zombies() == []
    assert server.stop() == 0


def test_accept_and_end_lines_carry_the_fields(serve: ServerFactory, mode: str) -> None:
    server = serve(*limit_args(mode, 7))
    with connect(server.port) as sock:
        local = sock.getsockname()
    (accept,) = server.wait_event("accept")
    assert accept["peer"] == f"{local[0]}:{local[1]}"
    assert accept["conns"] == "1/7"
    (end,) = server.wait_event("end", pid=accept["pid"])
    assert end["peer"] == accept["peer"]
    assert end["exit"] == "0"
    assert end["duration"].endswith("s")
    assert float(end["duration"][:-1]) >= 0
    assert end["conns"] == "0/7"


@pytest.mark.parametrize("size", [1, 255, 256, 257, 4096, 65537])
def test_messages_of_256_bytes_and_more(serve: ServerFactory, size: int) -> None:
    server = serve()
    payload = bytes(random.getrandbits(8) for _ in range(size))
    assert echo_roundtrip(server.port, payload) == payload


def test_multi_megabyte_payload_partial_writes(serve: ServerFactory) -> None:
    """The seed ignored write()'s return value; 24 MiB must come back whole."""
    server = serve()
    payload = random.randbytes(24 * 1024 * 1024)
    assert echo_roundtrip(server.port, payload) == payload


def test_binary_data_with_nul_bytes(serve: ServerFactory) -> None:
    server = serve()
    payload = bytes(range(256)) * 64 + b"\x00" * 1000
    assert echo_roundtrip(server.port, payload) == payload
    log = server.log_text()
    assert "\x00" not in log
    assert "\\x00" not in log  # peers' bytes are not logged at all at the default level


def test_half_close_gets_every_byte_back(serve: ServerFactory) -> None:
    server = serve()
    with connect(server.port) as sock:
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"x" * 100_000


def test_client_reset_mid_stream_ends_the_child_quietly(serve: ServerFactory) -> None:
    """The seed spun at 100% CPU writing -1 bytes after ECONNRESET."""
    server = serve()
    sock = connect(server.port)
    sock.sendall(b"a" * 500_000)  # more than the buffers hold: the child is mid-stream
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # SO_LINGER 0: close sends RST
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"
    assert "Traceback" not in server.log_text()
    assert echo_roundtrip(server.port, b"still serving") == b"still serving"


def test_child_killed_by_sigkill_is_logged_as_signal_9(serve: ServerFactory) -> None:
    server = serve()
    with connect(server.port):
        (accept,) = server.wait_event("accept")
        os.kill(int(accept["pid"]), signal.SIGKILL)
        (end,) = server.wait_event("end", pid=accept["pid"])
    assert end["signal"] == "SIGKILL(9)"
    assert "exit" not in end
    assert server.zombies() == []
    assert echo_roundtrip(server.port, b"next") == b"next"


def test_restart_right_after_stop_binds_at_once(serve: ServerFactory) -> None:
    """SO_REUSEADDR: TIME_WAIT connections on the port do not block a restart."""
    first = serve()
    port = first.port
    for _ in range(3):
        assert echo_roundtrip(port, b"hello") == b"hello"
    first.wait_event("end", count=3)
    assert first.stop() == 0
    second = serve(address=f"127.0.0.1:{port}")
    assert second.port == port
    assert echo_roundtrip(port, b"again") == b"again"


def test_max_conns_backlog_is_the_queue(serve: ServerFactory, mode: str) -> None:
    server = serve(*limit_args(mode, 2))
    held = [connect(server.port) for _ in range(2)]
    server.wait_event("accept", count=2)
    # The third completes its handshake in the kernel's backlog, but is not accepted.
    waiting = connect(server.port, timeout=0.5)
    waiting.sendall(b"queued")
    with pytest.raises(TimeoutError):
        waiting.recv(10)
    assert len(server.events("accept")) == 2
    assert len(server.children()) == 2
    held[0].close()
    server.wait_event("end")
    waiting.settimeout(15)
    assert recv_exactly(waiting, 6) == b"queued"
    accepts = server.wait_event("accept", count=3)
    assert accepts[2]["conns"] == "2/2"
    waiting.close()
    held[1].close()
    assert server.stop() == 0


def test_sigterm_drains_connections_in_flight(serve: ServerFactory) -> None:
    server = serve()
    sock = connect(server.port)
    sock.sendall(b"first")
    assert recv_exactly(sock, 5) == b"first"
    server.send_signal(signal.SIGTERM)
    (stop,) = server.wait_event("stop")
    assert stop["mode"] == "graceful"
    # No new connections once stopping...
    with pytest.raises(ConnectionRefusedError):
        connect(server.port).close()
    # ...but the one in flight is served to its end.
    sock.sendall(b"second")
    assert recv_exactly(sock, 6) == b"second"
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock) == b""
    sock.close()
    assert server.wait_exit() == 0
    assert server.leftovers() == []


def test_sigterm_serves_clients_waiting_in_the_backlog(serve: ServerFactory, mode: str) -> None:
    """A client whose handshake completed before SIGTERM is served, not reset."""
    server = serve(*limit_args(mode, 1))
    held = connect(server.port)
    server.wait_event("accept")
    queued = connect(server.port)
    queued.sendall(b"do not drop me")
    server.send_signal(signal.SIGTERM)
    (stop,) = server.wait_event("stop")
    assert stop["queued"] == "1"
    held.close()
    assert recv_exactly(queued, 14) == b"do not drop me"
    queued.close()
    assert server.wait_exit() == 0


def test_grace_expiry_terminates_children(serve: ServerFactory) -> None:
    server = serve("--grace", "0.3")
    with connect(server.port):
        server.wait_event("accept")
        server.send_signal(signal.SIGTERM)
        (end,) = server.wait_event("end")
        assert end["signal"] == "SIGTERM(15)"
        assert server.wait_exit() == 0
    assert server.events("terminate")
    assert server.leftovers() == []


def test_sigquit_stops_at_once(serve: ServerFactory) -> None:
    server = serve("--grace", "60")
    socks = [connect(server.port) for _ in range(3)]
    server.wait_event("accept", count=3)
    server.send_signal(signal.SIGQUIT)
    assert server.wait_exit() == 0
    assert server.events("stop")[0]["mode"] == "fast"
    assert len(server.events("end", signal="SIGTERM(15)")) == 3
    assert server.leftovers() == []
    for sock in socks:
        sock.close()


def test_second_sigint_stops_at_once(serve: ServerFactory) -> None:
    server = serve("--grace", "60")
    with connect(server.port):
        server.wait_event("accept")
        server.send_signal(signal.SIGINT)
        server.wait_event("stop", mode="graceful")
        server.send_signal(signal.SIGINT)
        assert server.wait_exit() == 0
    assert server.events("stop", mode="fast")


def test_recovers_from_emfile(start_server: ServerFactory) -> None:
    """Out of descriptors: log once, pause, serve the waiting client when fds return."""
    server = start_server()
    open_fds = len(os.listdir(f"/proc/{server.pid}/fd"))
    limits = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    # Exactly as many descriptors as are open: the next accept fails with EMFILE.
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (open_fds, limits[1]))
    waiting = [connect(server.port) for _ in range(3)]
    (paused,) = server.wait_event("accept-paused")
    assert paused["error"] == "EMFILE"
    cpu_before = _cpu_ticks(server.pid)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, limits)
    for sock in waiting:
        sock.sendall(b"back")
        assert recv_exactly(sock, 4) == b"back"
        sock.close()
    (resumed,) = server.wait_event("accept-resumed")
    assert resumed["after"] == "EMFILE"
    assert int(resumed["failures"]) >= 1
    # Paused, not spinning: about 10 retries a second cost next to no CPU.
    assert _cpu_ticks(server.pid) - cpu_before < 50
    assert len(server.events("accept-paused")) == 1


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")
def test_idle_server_waits_without_timeout(serve: ServerFactory) -> None:
    """No polling interval: idle, the parent blocks in epoll_wait with timeout -1."""
    server = serve()
    assert echo_roundtrip(server.port, b"x") == b"x"
    server.wait_event("end")
    epoll_wait, epoll_pwait = 232, 281

    def blocked_forever() -> bool:
        fields = Path(f"/proc/{server.pid}/syscall").read_text().split()
        if not fields[0].isdigit():  # "running"
            return False
        return (
            int(fields[0]) in (epoll_wait, epoll_pwait)
            and int(fields[4], 16) & 0xFFFFFFFF == 0xFFFFFFFF
        )  # int -1

    wait_until(blocked_forever, what="the parent to block in epoll_wait(-1)")


def test_address_in_use_exits_111(start_server: ServerFactory) -> None:
    server = start_server()
    result = run_cli(["serve", f"127.0.0.1:{server.port}"])
    assert result.returncode == 111
    assert result.stderr.decode().count("\n") == 1
    assert b"address already in use" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["serve", "99999"],
        ["serve", "abc"],
        ["serve", "-1"],
        ["serve", "::1:9000"],
        ["serve", "[::1]9000"],
        ["serve", "[nope]:9000"],
        ["serve", "127.0.0.1:"],
        ["serve", "bad host:80"],
        ["serve", "0", "--max-conns", "0"],
        ["serve", "0", "--max-conns", "many"],
        ["serve", "0", "--grace", "-1"],
        ["serve", "0", "--grace", "nan"],
        ["serve", "0", "--backlog", "0"],
        ["serve", "0", "--no-such-flag"],
        ["serve", "no-such-host.invalid:80"],
        ["nonsense"],
        [],
    ],
)
def test_bad_arguments_exit_100(args: list[str]) -> None:
    result = run_cli(args)
    assert result.returncode == 100, result.stderr
    assert result.stderr.decode().strip().count("\n") == 0, result.stderr
    assert b"Traceback" not in result.stderr


def test_ipv6_loopback(serve: ServerFactory) -> None:
    server = serve(address="[::1]:0")
    assert echo_roundtrip(server.port, b"six", host="::1") == b"six"
    (accept,) = server.wait_event("accept")
    assert accept["peer"].startswith("[::1]:")


def test_dual_stack_accepts_ipv4_and_ipv6(serve: ServerFactory) -> None:
    server = serve(address="[::]:0")
    assert echo_roundtrip(server.port, b"four", host="127.0.0.1") == b"four"
    assert echo_roundtrip(server.port, b"six", host="::1") == b"six"
    peers = [e["peer"] for e in server.wait_event("accept", count=2)]
    assert peers[0].startswith("[::ffff:127.0.0.1]:")
    assert peers[1].startswith("[::1]:")


def test_version() -> None:
    from forkserve import __version__

    result = run_cli(["--version"])
    assert result.returncode == 0
    assert result.stdout.decode().strip() == f"forkserve {__version__}"
    script = Path(sys.executable).parent / "forkserve"
    console = subprocess.run([script, "--version"], capture_output=True, check=False)
    assert console.stdout == result.stdout


def test_real_peer_socat_client(serve: ServerFactory) -> None:
    socat = pytest.importorskip("shutil").which("socat")
    if socat is None:
        pytest.skip("socat is not installed (make test installs it)")
    server = serve()
    payload = b"line one\n\nline three\n" + bytes(range(256))
    result = subprocess.run(
        [socat, "-t", "5", "-", f"TCP:127.0.0.1:{server.port}"],
        input=payload,
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
