"""Unix-domain sockets with the operations: SIGUSR2 upgrade, socket activation,
SIGHUP reload, metrics, socket ownership (issue 15, part 1)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_metrics import http_get, metrics_port
from tests.integration.test_unix import unix_connect, unix_roundtrip
from tests.support import FORKSERVE, WAIT, process_alive, recv_exactly, wait_until

LISTEN_FDS = str(Path(__file__).parent.parent / "data" / "listen_fds.py")


def test_upgrade_keeps_the_file_for_the_new_master(serve: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "up.sock"
    server = serve(address=f"unix:{path}")
    old = server.pid
    inode = path.lstat().st_ino
    with unix_connect(str(path)) as held:  # the old master's, across the upgrade
        held.sendall(b"before")
        assert recv_exactly(held, 6) == b"before"
        server.send_signal(signal.SIGUSR2)
        new = int(server.wait_event("upgrade-ready")[0]["pid"])
        server.wait_event("listen", upgraded_from=old, address=f"unix:{path}")
        held.sendall(b"after")
        assert recv_exactly(held, 5) == b"after"
    server.wait_event("stopped", pid=old)
    assert server.proc.wait(WAIT) == 0
    assert not server.events("socket-removed")
    assert path.lstat().st_ino == inode  # the same file, still served
    assert unix_roundtrip(str(path), b"new master") == b"new master"
    os.kill(new, signal.SIGTERM)  # the new master removes it when it stops
    server.wait_event("socket-removed", path=str(path))
    server.wait_event("stopped", pid=new)
    wait_until(lambda: not process_alive(new), WAIT, f"new master {new} to exit")
    assert not path.exists()


def test_socket_activation_of_a_unix_socket(start_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "activated.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen(16)
        wrapper = [sys.executable, LISTEN_FDS, str(sock.fileno()), "-"]
        server = start_server(
            command=[*wrapper, *FORKSERVE, "serve", "--print-port"], pass_fds=[sock.fileno()]
        )
    assert server.printed == str(path)
    listen = server.wait_event("listen")[0]
    assert (listen["address"], listen["fd"]) == (f"unix:{path}", "3")
    assert unix_roundtrip(str(path), b"activated") == b"activated"
    assert server.stop() == 0
    assert stat.S_ISSOCK(path.lstat().st_mode)  # systemd's file: never removed


def test_reload_applies_to_a_unix_socket(start_server: ServerFactory, tmp_path: Path) -> None:
    config = tmp_path / "f.toml"
    config.write_text('banner = "one\\n"\n')
    path = tmp_path / "reload.sock"
    server = start_server("--config", str(config), address=f"unix:{path}")
    assert unix_roundtrip(str(path), b"x") == b"one\nx"
    config.write_text('banner = "two\\n"\n')
    server.send_signal(signal.SIGHUP)
    server.wait_event("reload", changed="banner")
    assert unix_roundtrip(str(path), b"y") == b"two\ny"


def test_metrics_count_unix_connections(serve: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    server = serve("--metrics", "127.0.0.1:0", address=f"unix:{path}")
    for _ in range(3):
        assert unix_roundtrip(str(path), b"m") == b"m"
    server.wait_event("end", 3)
    status, body = http_get(metrics_port(server), "/metrics")
    assert status == 200
    lines = body.decode().splitlines()
    assert "forkserve_connections_accepted_total 3" in lines, body.decode()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_socket_user_and_group_as_root(start_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "owned.sock"
    start_server(
        "--socket-user", "nobody", "--socket-group", "65534", "--socket-mode", "0660",
        address=f"unix:{path}",
    )  # fmt: skip
    info = path.lstat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o660)


def test_unknown_socket_user_is_one_line(tmp_path: Path) -> None:
    from tests.support import run_cli

    result = run_cli(["serve", f"unix:{tmp_path}/x.sock", "--socket-user", "no-such-user-x"])
    assert result.returncode == 100
    assert result.stderr.decode().splitlines() == [
        "forkserve serve: --socket-user 'no-such-user-x': no such user"
    ]
    assert not (tmp_path / "x.sock").exists()
