"""A real HAProxy on loopback balancing over two forkserve instances with send-proxy-v2."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, ServerProcess, recv_all, wait_until

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")

CONFIG = """\
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 1s
    timeout client {timeout}s
    timeout server {timeout}s
    retries 3
    option redispatch 1
frontend front
    bind 127.0.0.1:{port}
    default_backend hosts
backend hosts
    balance roundrobin
    timeout check {timeout}s
    default-server send-proxy-v2 check check-send-proxy inter 200ms fall 3 rise 1
{servers}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def haproxy(tmp_path: Path, backends: list[ServerProcess]) -> Iterator[int]:
    """Run haproxy in the foreground in front of ``backends``; yield its port."""
    port = free_port()
    servers = "\n".join(f"    server s{i} 127.0.0.1:{b.port}" for i, b in enumerate(backends))
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(port=port, servers=servers, timeout=int(WAIT)))
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        process_group=0,
    )
    try:
        wait_until(lambda: can_connect(port), what="haproxy listening")
        for backend in backends:  # every host has passed a health check
            backend.wait_event("proxy", command="LOCAL")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT)
        assert proc.stderr is not None
        proc.stderr.close()


def can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def request(port: int, source: str, payload: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), WAIT, (source, 0)) as sock:
        sock.settimeout(WAIT)
        if payload:  # a FIN with no data while HAProxy still connects aborts the session
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def test_client_address_survives_the_balancer(start_server: ServerFactory, tmp_path: Path) -> None:
    program = ["sh", "-c", 'echo "$TCPREMOTEIP"']
    backends = [start_server("--proxy-protocol", "v2", "--", *program) for _ in range(2)]
    with haproxy(tmp_path, backends) as port:
        for i in range(8):
            source = "127.0.0.2" if i % 2 else "127.0.0.3"
            assert request(port, source) == f"{source}\n".encode()
    seen: set[str] = set()
    for backend in backends:  # round robin: both hosts served, logged with the clients
        hosts = {e["peer"].rsplit(":", 1)[0] for e in backend.events("proxy") if "command" not in e}
        assert hosts & {"127.0.0.2", "127.0.0.3"}
        seen |= hosts
        assert all(e["via"].startswith("127.0.0.1:") for e in backend.events("proxy"))
    assert {"127.0.0.2", "127.0.0.3"} <= seen


def test_draining_one_host_fails_no_client(start_server: ServerFactory, tmp_path: Path) -> None:
    backends = [start_server("--proxy-protocol", "v2", "--grace", "5") for _ in range(2)]
    failures: list[str] = []
    done = 0
    stop = threading.Event()

    def load(source: str) -> None:
        nonlocal done
        while not stop.is_set():
            payload = os.urandom(1000)
            try:
                if request(port, source, payload) != payload:
                    failures.append("mismatch")
            except OSError as exc:
                failures.append(repr(exc))
            done += 1

    with haproxy(tmp_path, backends) as port:
        threads = [threading.Thread(target=load, args=(s,)) for s in ("127.0.0.2", "127.0.0.3")]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: done >= 50, what="traffic through haproxy")
            assert backends[0].stop(signal.SIGTERM) == 0
            before = done
            wait_until(lambda: done >= before + 100, what="traffic after the drain")
        finally:
            stop.set()
            for thread in threads:
                thread.join(WAIT)
    assert failures == []
    assert backends[1].events("proxy")


def test_rules_judge_the_client_not_the_balancer(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """HAProxy connects from 127.0.0.1 for every client: --deny must judge the client
    its PROXY header names (its own LOCAL health checks are judged on 127.0.0.1)."""
    program = ["sh", "-c", 'echo "$TCPREMOTEIP"']
    backend = start_server("--proxy-protocol", "v2", "--deny", "127.0.0.2", "--", *program)
    with haproxy(tmp_path, [backend]) as port:
        assert request(port, "127.0.0.3") == b"127.0.0.3\n"
        assert request(port, "127.0.0.2") == b""
    (deny,) = backend.wait_event("deny")
    assert deny["peer"].startswith("127.0.0.2:")
    assert deny["rule"] == "--deny=127.0.0.2"
