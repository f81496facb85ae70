"""--user/--group (the tests run as root) and the per-child resource limits."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all, run_cli

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

NOBODY = pwd.getpwnam("nobody")


def status_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            ids[key] = [int(n) for n in value.split()]
    return ids


def test_user_nobody_runs_parent_and_children_as_nobody(serve: ServerFactory) -> None:
    server = serve("--user", "nobody")
    with connect(server.port) as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        (accept,) = server.wait_event("accept")
        child = status_ids(int(accept["pid"]))
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    assert child["Uid"] == [uid] * 4  # real, effective, saved, filesystem
    assert child["Gid"] == [gid] * 4
    assert set(child["Groups"]) <= {gid}
    assert status_ids(server.pid)["Uid"] == [uid] * 4
    assert not server.events("running-as-root")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (pytest's tmp_path is under a 0700 directory)."""
    with tempfile.TemporaryDirectory(prefix="forkserve-") as name:
        os.chmod(name, 0o755)  # noqa: S103 - nobody must enter it, as the test needs
        yield Path(name)


@pytest.mark.parametrize(
    ("file_mode", "hidden"),
    [(0o700, False), (0o755, True)],  # root's alone; or in a directory only root enters
)
def test_a_program_only_root_can_run_is_refused_at_start(
    open_dir: Path, tmp_path: Path, file_mode: int, hidden: bool
) -> None:
    program = (tmp_path if hidden else open_dir) / "prog"
    program.write_text("#!/bin/sh\necho hi\n")
    program.chmod(file_mode)
    result = run_cli(
        ["serve", "127.0.0.1:0", "--print-port", "--user", "nobody", "--", str(program)]
    )
    stderr = result.stderr.decode()
    assert result.returncode == 100, stderr
    assert result.stdout == b""  # never announced a port
    assert stderr.count("\n") == 1, stderr
    assert f"program '{program}' cannot be run as user nobody: permission denied" in stderr


def test_a_program_nobody_can_run_still_runs(start_server: ServerFactory, open_dir: Path) -> None:
    program = open_dir / "prog"
    program.write_text("#!/bin/sh\nid -u\n")
    program.chmod(0o755)
    server = start_server("--user", "nobody", "--", str(program))
    with connect(server.port) as sock:
        assert recv_all(sock) == f"{NOBODY.pw_uid}\n".encode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_a_tls_key_only_root_can_read_is_reported_and_reload_keeps_the_old(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """The key is read as root at start; SIGHUP reads it again as --user, which
    cannot: said at start (reload-unreadable), and a reload keeps serving."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    server = serve("--user", "nobody", "--tls-cert", str(cert), "--tls-key", str(key))
    (warning,) = server.wait_event("reload-unreadable")
    assert warning["files"] == f"{cert},{key}"  # tmp_path: root's alone
    assert warning["user"] == "user nobody"
    server.send_signal(signal.SIGHUP)
    (failed,) = server.wait_event("reload-failed", what="tls")
    assert "Permission denied" in failed["error"]
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with context.wrap_socket(connect(server.port)) as sock:
        sock.sendall(b"still")
        assert sock.recv(10) == b"still"


def test_root_without_user_is_warned_about(start_server: ServerFactory) -> None:
    server = start_server()
    (warning,) = server.wait_event("running-as-root")
    assert "--user" in warning["hint"]


def test_group_alone_changes_only_the_group(start_server: ServerFactory) -> None:
    server = start_server("--group", "nogroup", "--", "sh", "-c", "id -u; id -g")
    with connect(server.port) as sock:
        assert recv_all(sock).split() == [b"0", str(NOBODY.pw_gid).encode()]


def limits_of(port: int) -> dict[str, tuple[str, str]]:
    """The program's /proc/self/limits: name -> (soft, hard)."""
    with connect(port) as sock:
        text = recv_all(sock).decode()
    found = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        found[name] = (soft, hard)
    return found


def test_resource_limits_are_set_in_the_child(start_server: ServerFactory) -> None:
    server = start_server(
        "--limit-nofile", "64",
        "--limit-as", "1G",
        "--limit-cpu", "7",
        "--limit-nproc", "500",
        "--user", "nobody",
        "--", "cat", "/proc/self/limits",
    )  # fmt: skip
    limits = limits_of(server.port)
    assert limits["Max open files"] == ("64", "64")
    assert limits["Max address space"] == (str(1 << 30), str(1 << 30))
    assert limits["Max cpu time"] == ("7", "8")  # SIGXCPU first, SIGKILL a second later
    assert limits["Max processes"] == ("500", "500")


def test_cpu_limit_ends_a_spinning_handler(serve: ServerFactory, mode: str, tmp_path: Path) -> None:
    spin = tmp_path / "spin.py"
    spin.write_text("def handle(conn, peer):\n    conn.recv(1)\n    while True:\n        pass\n")
    server = serve("--limit-cpu", "1", "--handler", f"{spin}:handle")
    with connect(server.port) as sock:
        sock.sendall(b"go")
        (end,) = server.wait_event("end", timeout=10)
    assert end["signal"] == "SIGXCPU(24)"
    if mode == "prefork":  # the worker died with it and is replaced; the pool serves on
        server.wait_event("worker-exit", reason="crashed")
        with connect(server.port) as sock:
            sock.sendall(b"ok")
            sock.shutdown(socket.SHUT_WR)
            server.wait_event("accept", count=2)
