"""Unix-domain sockets (issue 15, part 1): ``forkserve serve unix:PATH`` and
``unix:@NAME`` against real clients (socat, nc -U), the socket file's life, the peer's
credentials."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, raw_listener, recv_all, run_cli, wait_until

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


def unix_connect(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def unix_roundtrip(address: str | bytes, payload: bytes) -> bytes:
    with unix_connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def me() -> str:
    return f"pid:{os.getpid()},uid:{os.getuid()},gid:{os.getgid()}"


@needs_socat
def test_serves_a_socket_file_to_socat_and_removes_it_at_a_stop(
    serve: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "echo.sock"
    server = serve(address=f"unix:{path}")
    assert server.printed == str(path)
    assert server.wait_event("listen")[0]["address"] == f"unix:{path}"
    assert stat.S_ISSOCK(path.lstat().st_mode)
    result = subprocess.run(
        ["socat", "-", f"UNIX-CONNECT:{path}"],
        input=b"hello over a path\n",
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    assert result.stdout == b"hello over a path\n", result.stderr
    accepted = server.wait_event("accept")[0]
    peer = dict(part.split(":") for part in accepted["peer"].split(","))
    assert peer["uid"] == str(os.getuid()) and peer["gid"] == str(os.getgid())
    assert int(peer["pid"]) > 0
    assert server.stop() == 0
    assert not path.exists()
    server.wait_event("socket-removed", path=str(path))


def test_nc_dash_u_is_served(serve: ServerFactory, tmp_path: Path) -> None:
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("no nc")
    path = tmp_path / "nc.sock"
    server = serve(address=f"unix:{path}")
    # ncat and netcat-openbsd both take -U; ncat ends at the server's end of file.
    result = subprocess.run(
        [nc, "-U", str(path)], input=b"via nc\n", capture_output=True, timeout=WAIT, check=False
    )
    assert result.stdout == b"via nc\n", result.stderr
    server.wait_event("end", exit=0)


def test_abstract_name_has_no_file(serve: ServerFactory, tmp_path: Path) -> None:
    name = f"forkserve-test-{os.getpid()}-{tmp_path.name}"
    server = serve(address=f"unix:@{name}")
    assert server.printed == f"@{name}"
    assert server.wait_event("listen")[0]["address"] == f"unix:@{name}"
    assert unix_roundtrip(b"\0" + name.encode(), b"abstract") == b"abstract"
    assert server.stop() == 0
    with pytest.raises(ConnectionRefusedError):
        unix_connect(b"\0" + name.encode())


def test_handler_gets_the_peer_credentials(serve: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "whoami.py").write_text(
        "def handle(conn, peer):\n    conn.sendall(repr(peer).encode())\n"
    )
    path = tmp_path / "who.sock"
    serve("--handler", "whoami:handle", address=f"unix:{path}", cwd=tmp_path)
    with unix_connect(str(path)) as sock:
        assert recv_all(sock) == repr((os.getpid(), os.getuid(), os.getgid())).encode()


def test_socket_mode_and_default_mode(start_server: ServerFactory, tmp_path: Path) -> None:
    default = tmp_path / "default.sock"
    start_server(address=f"unix:{default}")
    umask = os.umask(0)
    os.umask(umask)  # the server inherits ours: 0666 less it, as unixserver
    assert stat.S_IMODE(default.lstat().st_mode) == 0o666 & ~umask
    narrow = tmp_path / "narrow.sock"
    start_server("--socket-mode", "0600", address=f"unix:{narrow}")
    assert stat.S_IMODE(narrow.lstat().st_mode) == 0o600


def test_a_stale_file_is_replaced(start_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: connect gets ECONNREFUSED
    server = start_server(address=f"unix:{path}")
    assert unix_roundtrip(str(path), b"fresh") == b"fresh"
    assert server.stop() == 0
    assert not path.exists()


def test_a_live_socket_is_never_stolen(start_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    first = start_server(address=f"unix:{path}")
    inode = path.lstat().st_ino
    result = run_cli(["serve", f"unix:{path}"])
    assert result.returncode == 111
    assert result.stderr.decode().splitlines() == [
        f"forkserve serve: cannot listen on unix:{path}: address already in use by a running server"
    ]
    assert path.lstat().st_ino == inode
    assert unix_roundtrip(str(path), b"still first") == b"still first"
    first.wait_event("accept")


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious\n")
    result = run_cli(["serve", f"unix:{path}"])
    assert result.returncode == 111
    assert result.stderr.decode().splitlines() == [
        f"forkserve serve: cannot listen on unix:{path}: the file exists and is not a socket"
    ]
    assert path.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("address", "code", "message"),
    [
        ("unix:", 100, "empty Unix socket address 'unix:'"),
        ("unix:@", 100, "empty Unix socket address 'unix:@'"),
        ("unix:/" + "x" * 108, 100, "Unix socket address too long (109 bytes, at most 107)"),
        ("unix:/no/such/directory/s.sock", 111, "the directory does not exist"),
    ],
)
def test_bad_addresses_are_one_line(address: str, code: int, message: str) -> None:
    result = run_cli(["serve", address])
    assert result.returncode == code
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in lines[0]


def test_sigquit_removes_the_file_too(start_server: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "fast.sock"
    server = start_server(address=f"unix:{path}")
    assert server.stop(signal.SIGQUIT) == 0
    assert not path.exists()


UNIX_ENV = str(Path(__file__).parents[1] / "data" / "ucspi_unix_env.sh")
# Inherited values that describe some other connection: both servers' programs must
# not see them (unixserver drops only the UNIX* ones it sets; forkserve every UCSPI name).
STALE_UNIX = {"UNIXREMOTEPID": "1", "UNIXREMOTEEUID": "12345", "PROTO": "stale"}
STALE_TCP = {"TCPREMOTEIP": "192.0.2.1", "TCPREMOTEPORT": "9"}


def read_unix_env(path: Path) -> dict[str, str]:
    with unix_connect(str(path)) as sock:
        text = recv_all(sock).decode()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_exec_mode_gets_the_ucspi_unix_environment(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "env.sock"
    env = {**os.environ, **STALE_UNIX, **STALE_TCP}
    server = start_server("--", UNIX_ENV, address=f"unix:{path}", env=env)
    # UNIXLOCALPID is the program's own pid, as unixserver sets it: known only in a
    # forked child, so a Unix socket's programs are never spawned (parent.spawn).
    assert server.wait_event("listen")[0]["start"] == "fork"
    got = read_unix_env(path)
    served_by = got.pop("PID")
    assert got == {
        "PROTO": "UNIX",
        "UNIXLOCALPATH": str(path),
        "UNIXLOCALPID": served_by,
        "UNIXLOCALUID": str(os.getuid()),
        "UNIXLOCALGID": str(os.getgid()),
        "UNIXREMOTEPID": str(os.getpid()),
        "UNIXREMOTEEUID": str(os.getuid()),
        "UNIXREMOTEEGID": str(os.getgid()),
    }
    server.wait_event("end", exit=0)


@pytest.mark.skipif(shutil.which("unixserver") is None, reason="no unixserver (ucspi-unix)")
def test_exec_environment_same_as_unixserver(start_server: ServerFactory, tmp_path: Path) -> None:
    env = {**os.environ, **STALE_UNIX}
    ours_path, theirs_path = tmp_path / "ours.sock", tmp_path / "theirs.sock"
    start_server("--", UNIX_ENV, address=f"unix:{ours_path}", env=env)
    start_server(str(theirs_path), UNIX_ENV, command=["unixserver"], env=env, print_port=False)
    wait_until(theirs_path.exists, what="unixserver's socket file")
    ours, theirs = read_unix_env(ours_path), read_unix_env(theirs_path)
    assert ours.keys() == theirs.keys(), (ours, theirs)
    for name, value in theirs.items():
        if name == "UNIXLOCALPATH":
            assert (ours[name], value) == (str(ours_path), str(theirs_path))
        elif name in {"UNIXLOCALPID", "PID"}:
            assert ours[name] == ours["PID"] and value == theirs["PID"]
        else:
            assert ours[name] == value, name
    assert theirs["PROTO"] == "UNIX"


def test_abstract_socket_environment_names_it_with_an_at(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    name = f"forkserve-env-{os.getpid()}-{tmp_path.name}"
    start_server("--", UNIX_ENV, address=f"unix:@{name}")
    with unix_connect(b"\0" + name.encode()) as sock:
        text = recv_all(sock).decode()
    assert f"UNIXLOCALPATH=@{name}" in text.splitlines()


def test_proxy_from_is_refused_on_a_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    result = run_cli(
        ["serve", f"unix:{path}", "--proxy-protocol", "v1", "--proxy-from", "10.0.0.0/8"]
    )
    assert result.returncode == 100
    assert result.stderr.decode().splitlines() == [
        "forkserve serve: --proxy-from lists IP networks, and a Unix socket's clients have "
        "none: its file's permissions (--socket-mode) say who may connect"
    ]
    assert not path.exists()


def test_proxy_protocol_on_a_unix_socket(start_server: ServerFactory, tmp_path: Path) -> None:
    # A balancer on the same machine (haproxy's send-proxy to a unix@ server).
    path = tmp_path / "behind.sock"
    server = start_server("--proxy-protocol", "v1", address=f"unix:{path}")
    header = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n"
    assert unix_roundtrip(str(path), header + b"proxied") == b"proxied"
    proxy = server.wait_event("proxy")[0]
    assert (proxy["peer"], proxy["via"]) == ("192.0.2.1:1234", me())


def test_a_failed_start_leaves_no_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "failed.sock"
    with raw_listener() as taken:
        port = taken.getsockname()[1]
        result = run_cli(["serve", f"unix:{path}", "--metrics", f"127.0.0.1:{port}"])
    assert result.returncode == 111, result.stderr
    assert "address already in use" in result.stderr.decode()
    assert not path.exists()


@pytest.mark.parametrize("address", ["127.0.0.1:0", "unix:@abstract-x"])
def test_socket_file_options_need_a_socket_file(address: str) -> None:
    result = run_cli(["serve", address, "--socket-group", "0"])
    assert result.returncode == 100
    assert result.stderr.decode().splitlines() == [
        "forkserve serve: --socket-mode/--socket-user/--socket-group apply to a socket file "
        "forkserve creates: serve unix:PATH"
    ]
