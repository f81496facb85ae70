"""--config FILE and SIGHUP: settings from TOML, reloaded without dropping anyone."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from tests.integration.conftest import ServerFactory
from tests.integration.test_access import connect_from
from tests.integration.test_metrics import scrape
from tests.integration.test_systemd import notify_socket, wait_notification
from tests.support import FORKSERVE, ServerProcess, connect, recv_exactly, run_cli


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def greeted(port: int, banner: bytes) -> socket.socket:
    """A connection whose banner is checked; still open, echoing."""
    sock = connect(port)
    assert recv_exactly(sock, len(banner)) == banner
    return sock


def echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    sock.sendall(data)
    return recv_exactly(sock, len(data)) == data


def test_file_settings_and_command_line_overrides(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    config = write(tmp_path / "f.toml", 'banner = "file\\n"\nmax-conns = 7\ngrace = 2\n')
    server = start_server("--config", config, "--max-conns", "9")
    assert server.wait_event("listen")[0]["max_conns"] == "9"
    with greeted(server.port, b"file\n") as sock:
        assert echoes(sock)


def test_the_address_may_come_from_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "f.toml", 'listen = "127.0.0.1:0"\nprint-port = true\n')
    server = ServerProcess(["--config", config], command=[*FORKSERVE, "serve"])
    try:
        assert server.port > 0
    finally:
        assert server.close() == []


def test_bad_files_are_refused_with_the_key_and_the_reason(tmp_path: Path) -> None:
    cases = {
        "max_conns = 5\n": "unknown setting 'max_conns' (did you mean 'max-conns'?)",
        "max-conns = 0\n": "max-conns: expected 1 or more, not 0",
        "max-conns = [\n": "is not valid TOML",
        "min-spare = 2\n": "--min-spare needs --mode prefork",
        "quiet = true\nverbose = true\n": "quiet and verbose exclude each other",
    }
    for text, message in cases.items():
        config = write(tmp_path / "bad.toml", text)
        result = run_cli(["serve", "0", "--config", config])
        assert result.returncode == 100, text
        assert message in result.stderr.decode(), result.stderr
    missing = run_cli(["serve", "0", "--config", str(tmp_path / "none.toml")])
    assert missing.returncode == 100
    assert b"cannot read config file" in missing.stderr


def test_reload_applies_a_new_limit_and_banner_to_new_connections_only(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "f.toml"
    config = write(path, 'max-conns = 1\nbanner = "one\\n"\n')
    server = start_server("--config", config)
    with greeted(server.port, b"one\n") as held, connect(server.port) as waiting:
        # The second client is over the limit: it waits in the backlog.
        write(path, 'max-conns = 2\nbanner = "two\\n"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_event("reload", changed="max-conns,banner")
        # It is taken under the new limit, with the new banner, while the live
        # connection keeps working as it started.
        assert recv_exactly(waiting, 4) == b"two\n"
        assert echoes(waiting)
        assert echoes(held)
    server.wait_event("end", 2)


def test_a_broken_file_keeps_the_running_configuration(
    serve: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "f.toml"
    server = serve("--config", write(path, 'banner = "kept\\n"\n'), "--metrics", "127.0.0.1:0")
    write(path, "banner = \n")
    server.send_signal(signal.SIGHUP)
    failed = server.wait_event("reload-failed")[0]
    assert "is not valid TOML" in failed["error"]
    write(path, 'banner = "\\\\q"\n')
    server.send_signal(signal.SIGHUP)
    assert "banner: invalid escape" in server.wait_event("reload-failed", 2)[1]["error"]
    with greeted(server.port, b"kept\n") as sock:
        assert echoes(sock)
    assert scrape(server)["forkserve_operations_total", "operation=reload-failed"] == 2


def test_prefork_reload_replaces_workers_gracefully(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "f.toml"
    config = write(path, 'mode = "prefork"\nmin-spare = 1\nbanner = "old\\n"\n')
    server = start_server("--config", config, "-v")
    with greeted(server.port, b"old\n") as held:  # a busy worker, across the reload
        write(path, 'mode = "prefork"\nmin-spare = 2\nbanner = "new\\n"\n')
        server.send_signal(signal.SIGHUP)
        server.wait_event("reload", changed="min-spare,banner")
        with greeted(server.port, b"new\n") as fresh:
            assert echoes(fresh)
        assert echoes(held)  # its worker retires only once this ends
    server.wait_event("worker-retire", reason="reload")
    server.wait_event("worker-exit", reason="stopped")


def test_a_reload_reports_what_needs_an_upgrade(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "f.toml"
    server = start_server("--config", write(path, "grace = 1\n"))
    write(path, 'grace = 2\nhandler = "discard"\nbacklog = 5\n')
    server.send_signal(signal.SIGHUP)
    reload = server.wait_event("reload")[0]
    assert reload == {"changed": "grace", "needs_upgrade": "backlog,handler"}
    with connect(server.port) as sock:
        assert echoes(sock)  # still echo: the handler needs SIGUSR2


def test_reload_under_systemd_notifies_reloading_then_ready(
    serve: ServerFactory, tmp_path: Path
) -> None:
    name = str(tmp_path / "notify")
    with notify_socket(name) as notify:
        config = write(tmp_path / "f.toml", "grace = 1\n")
        server = serve("--config", config, env={**os.environ, "NOTIFY_SOCKET": name})
        assert wait_notification(notify, "READY")["READY"] == "1"
        server.send_signal(signal.SIGHUP)
        reloading = wait_notification(notify, "RELOADING")
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert wait_notification(notify, "READY")["READY"] == "1"
        server.wait_event("reload")


def test_reload_applies_a_changed_rule_to_new_connections_only(
    serve: ServerFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.write_text("127.0.0.3:deny\n")
    config = write(tmp_path / "f.toml", f'rules = "{rules}"\n')
    server = serve("--config", config, "--metrics", "127.0.0.1:0")
    with connect_from("127.0.0.3", server.port) as denied:
        assert denied.recv(10) == b""
    with connect_from("127.0.0.2", server.port) as held:
        assert echoes(held)
        rules.write_text("127.0.0.2:deny\n")
        server.send_signal(signal.SIGHUP)
        server.wait_event("reload", changed="rules")
        with connect_from("127.0.0.2", server.port) as now_denied:
            assert now_denied.recv(10) == b""
        with connect_from("127.0.0.3", server.port) as now_allowed:
            assert echoes(now_allowed)
        assert echoes(held)  # the live connection is untouched
    assert [d["peer"].split(":")[0] for d in server.wait_event("deny", 2)] == [
        "127.0.0.3",
        "127.0.0.2",
    ]
    assert scrape(server)["forkserve_connections_rejected_total", "reason=deny"] == 2


def test_reload_applies_a_new_per_ip_limit(start_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    server = start_server("--config", write(path, "per-ip = 1\n"))
    with connect(server.port) as first:
        assert echoes(first)
        with connect(server.port) as second:
            assert second.recv(10) == b""  # rejected: one per address
        write(path, "per-ip = 2\n")
        server.send_signal(signal.SIGHUP)
        server.wait_event("reload", changed="per-ip")
        with connect(server.port) as third:
            assert echoes(third)
    assert len(server.events("reject", reason="per-ip")) == 1


def test_reload_keeps_the_rate_buckets(serve: ServerFactory, tmp_path: Path) -> None:
    """A SIGHUP hands no source a fresh --rate budget: with the rate unchanged, or
    changed, the buckets carry on (the new rate bounds them from then on)."""
    path = tmp_path / "f.toml"
    server = serve("--config", write(path, 'rate = "2/60"\n'))
    for _ in range(2):
        with connect(server.port) as sock:
            assert echoes(sock)
    with connect(server.port) as sock:
        assert sock.recv(10) == b""  # the budget is spent
    server.send_signal(signal.SIGHUP)
    server.wait_event("reload", changed="none")
    with connect(server.port) as sock:
        assert sock.recv(10) == b""  # still spent: nothing changed
    write(path, 'rate = "3/60"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_event("reload", changed="rate")
    with connect(server.port) as sock:
        assert sock.recv(10) == b""  # a larger budget refills at its rate, not at once
    assert len(server.wait_event("reject", count=3, reason="rate")) == 3
