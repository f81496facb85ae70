"""--metrics: Prometheus exposition and /healthz, served from the parent's own loop."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forkserve.core.metrics import MAX_REQUEST
from forkserve.parent.endpoint import MAX_CLIENTS
from tests.integration.conftest import ServerFactory
from tests.support import (
    ServerProcess,
    connect,
    echo_roundtrip,
    find_promtool,
    recv_all,
    recv_exactly,
    run_cli,
    wait_until,
)

METRICS = ("--metrics", "127.0.0.1:0")


def metrics_port(server: ServerProcess) -> int:
    address = server.wait_event("metrics")[0]["address"]
    return int(address.rpartition(":")[2])


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with connect(port) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        reply = recv_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def scrape(server: ServerProcess) -> dict[tuple[str, str], float]:
    """Every sample, keyed by name and rendered labels, parsed by prometheus_client."""
    status, body = http_get(metrics_port(server), "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[sample.name, labels] = sample.value
    return found


def test_counters_move_with_connections(serve: ServerFactory, mode: str) -> None:
    server = serve(*METRICS)
    before = scrape(server)
    assert before["forkserve_connections_accepted_total", ""] == 0
    for n in range(3):
        assert echo_roundtrip(server.port, b"x" * n) == b"x" * n
    server.wait_event("end", 3)
    after = scrape(server)
    assert after["forkserve_connections_accepted_total", ""] == 3
    assert after["forkserve_connection_duration_seconds_count", ""] == 3
    assert after["forkserve_connections_active", ""] == 0
    if mode == "fork":
        assert after["forkserve_children_exited_total", "outcome=ok"] == 3
        assert after["forkserve_accept_to_fork_seconds_count", ""] == 3
    else:
        assert after["forkserve_workers", "state=idle"] >= 1
    assert after["forkserve_connections_rejected_total", "reason=dropped"] == 0


def test_active_gauge_and_a_killed_child(serve: ServerFactory, mode: str) -> None:
    server = serve(*METRICS)
    with connect(server.port) as held:
        held.sendall(b"ping")
        assert recv_exactly(held, 4) == b"ping"
        now = scrape(server)
        assert now["forkserve_connections_active", ""] == 1
        if mode == "prefork":
            assert now["forkserve_workers", "state=busy"] == 1
        pid = int(server.wait_event("accept")[0]["pid"])
        os.kill(pid, signal.SIGKILL)
        server.wait_event("end", pid=pid)
    assert scrape(server)["forkserve_children_exited_total", "outcome=signal"] == 1


def test_healthz_says_stopping_during_the_drain(serve: ServerFactory) -> None:
    server = serve(*METRICS)
    port = metrics_port(server)
    assert http_get(port, "/healthz") == (200, b"ok\n")
    assert http_get(port, "/nothing")[0] == 404
    with connect(server.port) as held:
        held.sendall(b"a")
        assert recv_exactly(held, 1) == b"a"
        server.send_signal(signal.SIGTERM)
        server.wait_event("stop")
        assert http_get(port, "/healthz") == (503, b"stopping\n")
    assert server.wait_exit() == 0


def test_slow_scrapers_never_block_the_parent(serve: ServerFactory) -> None:
    server = serve(*METRICS)
    port = metrics_port(server)
    silent = [connect(port) for _ in range(MAX_CLIENTS + 4)]  # more than it holds at once
    try:
        silent[0].sendall(b"GET /metr")  # half a request, then nothing
        assert echo_roundtrip(server.port, b"still serving") == b"still serving"
        for sock in silent:
            sock.close()
        with connect(port) as huge:
            # One byte over the limit: anything more would still be unread when the
            # endpoint closes, and the kernel would reset the connection instead.
            huge.sendall(b"G" * (MAX_REQUEST + 1))
            assert recv_all(huge).startswith(b"HTTP/1.0 431 ")
        assert http_get(port, "/healthz")[0] == 200
    finally:
        for sock in silent:
            sock.close()


def socket_inode(port: int) -> str:
    """The inode of the listening TCP socket on ``port``, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"no listener on {port}")


def open_sockets(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_children_do_not_hold_the_metrics_socket(serve: ServerFactory) -> None:
    server = serve(*METRICS)
    inode = socket_inode(metrics_port(server))
    assert inode in open_sockets(server.pid)
    with connect(server.port) as held:
        held.sendall(b"a")
        assert recv_exactly(held, 1) == b"a"
        # The process serving the connection (a worker that was just forked may
        # not have closed its copies yet, so not every child is checked).
        pid = int(server.wait_event("accept")[0]["pid"])
        assert inode not in open_sockets(pid)


def test_metrics_address_in_use_is_exit_111(start_server: ServerFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(["serve", "0", "--metrics", f"127.0.0.1:{port}"])
    assert result.returncode == 111
    assert b"address already in use" in result.stderr


# -- the exposition as Prometheus reads it (issue 12, finding 21) -------------------------

# Every family by the name prometheus_client's parser gives it (a counter's name without
# ``_total``), and its type.
FAMILIES = {
    "forkserve_connections_accepted": "counter",
    "forkserve_connections_rejected": "counter",
    "forkserve_children_exited": "counter",
    "forkserve_operations": "counter",
    "forkserve_connection_duration_seconds": "histogram",
    "forkserve_accept_to_fork_seconds": "histogram",
    "forkserve_connections_active": "gauge",
    "forkserve_connections_limit": "gauge",
}
LIMITS = ("--per-ip", "4", "--rate", "100/1", "--deny", "192.0.2.0/24")


def test_promtool_accepts_the_exposition(serve: ServerFactory) -> None:
    tool = find_promtool()
    if tool is None:
        pytest.skip("promtool is not installed (make test fetches it: see the Makefile)")
    server = serve(*METRICS, *LIMITS)
    assert echo_roundtrip(server.port, b"x") == b"x"
    status, body = http_get(metrics_port(server), "/metrics")
    assert status == 200
    # `check metrics` lints too (help text, names, units): any finding is exit 3.
    result = subprocess.run(
        [tool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_every_family_has_its_type_and_samples(serve: ServerFactory, mode: str) -> None:
    server = serve(*METRICS, *LIMITS)
    status, body = http_get(metrics_port(server), "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    pooled = mode in ("prefork", "async")
    expected = FAMILIES | ({"forkserve_workers": "gauge"} if pooled else {})
    assert {name: f.type for name, f in families.items()} == expected
    for family in families.values():
        assert family.samples, f"{family.name} has no samples"
        if family.type == "counter":
            assert {s.name for s in family.samples} == {family.name + "_total"}
    # Every reason and operation this server can count is there from the first scrape,
    # at 0, so rate() and increase() see the first event.
    rejected = {
        s.labels["reason"]: s.value for s in families["forkserve_connections_rejected"].samples
    }
    assert rejected == dict.fromkeys(("deny", "per-ip", "rate", "fork-failed", "dropped"), 0)
    operations = {s.labels["operation"]: s.value for s in families["forkserve_operations"].samples}
    assert operations == dict.fromkeys(("reload-ok", "reload-failed", "upgrade-failed"), 0)


def rejection_labels(server: ServerProcess) -> set[str]:
    return {labels for name, labels in scrape(server) if name.endswith("_rejected_total")}


def test_a_reason_shows_once_a_reload_sets_its_limit(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    config = tmp_path / "f.toml"
    config.write_text('banner = ""\n')
    server = start_server("--config", str(config), *METRICS)
    assert rejection_labels(server) == {"reason=fork-failed", "reason=dropped"}
    config.write_text("per-ip = 2\n")
    server.send_signal(signal.SIGHUP)
    server.wait_event("reload", changed="per-ip")
    assert rejection_labels(server) == {"reason=fork-failed", "reason=dropped", "reason=per-ip"}


# -- /healthz under attack, and out of descriptors (issue 12, finding 7) ------------------


def curl_healthz(port: int) -> tuple[str, float]:
    """``/healthz`` by curl: the status it got (000: none in 10 s), and how long it took."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/healthz"
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", url]
    result = subprocess.run(curl, capture_output=True, timeout=30, check=False)
    return result.stdout.decode(), time.monotonic() - started


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_healthz_answers_while_silent_clients_hold_the_endpoint(serve: ServerFactory) -> None:
    """24 connections that never send a request (3 times the old 8 slots of 5 s, and
    its backlog's worth more) must not keep a balancer's health check waiting."""
    server = serve(*METRICS)
    port = metrics_port(server)
    silent = [connect(port) for _ in range(24)]
    try:
        silent[0].sendall(b"GET /metr")  # half a request, then nothing
        for _ in range(3):
            status, took = curl_healthz(port)
            assert status == "200" and took < 1.5, (status, took)
        assert echo_roundtrip(server.port, b"still serving") == b"still serving"
        # The held connections are closed by the endpoint, none is kept forever.
        for sock in silent:
            assert recv_all(sock) == b""
    finally:
        for sock in silent:
            sock.close()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(n for n in range(len(used) + 1) if n not in used)


def test_endpoint_pauses_on_emfile_and_recovers(start_server: ServerFactory) -> None:
    """Out of descriptors, the endpoint's listener leaves the selector for a pause
    instead of staying readable and spinning the parent at 100% CPU."""
    server = start_server(*METRICS)
    port = metrics_port(server)
    limits = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    # Room for two clients: the third accept fails with EMFILE.
    room = lowest_free_fd(server.pid) + 2
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (room, limits[1]))
    held = [connect(port) for _ in range(4)]
    try:
        wait_until(lambda: lowest_free_fd(server.pid) >= room, what="the descriptors to run out")
        before = cpu_ticks(server.pid)
        # A measurement interval, not a synchronisation: the parent's CPU time over a
        # second out of descriptors, with connections waiting on the listener. A pause
        # retries about 10 times a second; a spin takes most of a core.
        time.sleep(1.0)
        spent = cpu_ticks(server.pid) - before
        assert spent < 0.2 * os.sysconf("SC_CLK_TCK"), f"{spent} ticks in 1s"
        assert server.wait_event("metrics-accept-paused")[0]["error"] == "EMFILE"
    finally:
        for sock in held:
            sock.close()
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, limits)
    assert http_get(port, "/healthz") == (200, b"ok\n")
    resumed = server.wait_event("metrics-accept-resumed")
    # Logged once per burst, not per failure (a held client timing out after 2 s
    # frees a descriptor, so a slow run may see a second burst).
    paused = server.events("metrics-accept-paused")
    assert len(paused) == len(resumed)
    assert all(r["after"] == "EMFILE" and int(r["failures"]) >= 1 for r in resumed)
