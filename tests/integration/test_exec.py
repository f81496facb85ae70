"""Exec mode against the real CLI: a program per connection, as tcpserver runs one."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all, recv_exactly, run_cli

DATA = Path(__file__).parents[1] / "data"
UCSPI_ENV = str(DATA / "ucspi_env.sh")


def read_env(port: int, host: str = "127.0.0.1") -> tuple[dict[str, str], tuple[str, int]]:
    """Connect, read the program's ``NAME=value`` lines; return them and our address."""
    with connect(port, host) as sock:
        local = sock.getsockname()
        text = recv_all(sock).decode()
    env = dict(line.split("=", 1) for line in text.splitlines())
    return env, (local[0], local[1])


def test_program_gets_the_socket_and_its_exit_code_is_logged(
    start_server: ServerFactory,
) -> None:
    server = start_server("--", "sh", "-c", "cat; exit 3")
    with connect(server.port) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"hello\n"
    (end,) = server.wait_event("end")
    assert end["exit"] == "3"
    (listen,) = server.events("listen")
    assert listen["program"] == "sh -c 'cat; exit 3'"


def test_program_arguments_after_dashes_are_not_forkserve_options(
    start_server: ServerFactory,
) -> None:
    server = start_server("--", "echo", "-v", "--max-conns", "x")
    with connect(server.port) as sock:
        assert recv_all(sock) == b"-v --max-conns x\n"


def test_ucspi_variables(start_server: ServerFactory) -> None:
    stale = {**os.environ, "TCPREMOTEHOST": "stale", "TCPREMOTEINFO": "stale", "X": "kept"}
    server = start_server("--", "sh", "-c", "env | LC_ALL=C sort", env=stale)
    env, (host, port) = read_env(server.port)
    assert env["PROTO"] == "TCP"
    assert env["TCPLOCALIP"] == "127.0.0.1"
    assert env["TCPLOCALPORT"] == str(server.port)
    assert env["TCPREMOTEIP"] == host
    assert env["TCPREMOTEPORT"] == str(port)
    assert env["TCPCONNNUM"] == "0"
    assert env["TCP6REMOTEIP"] == f"::ffff:{host}"
    assert "TCPREMOTEHOST" not in env
    assert "TCPREMOTEINFO" not in env
    assert "TCPLOCALHOST" not in env
    assert env["X"] == "kept"


def test_tcpconnnum_counts_connections_already_open_from_the_address(
    start_server: ServerFactory,
) -> None:
    server = start_server("--", "sh", "-c", 'echo "$TCPCONNNUM"; exec cat')
    first = connect(server.port)
    assert first.recv(100) == b"0\n"
    with connect(server.port) as second:
        assert second.recv(100) == b"1\n"
    first.close()
    server.wait_event("end", count=2)
    with connect(server.port) as third:
        assert third.recv(100) == b"0\n"


def test_reverse_lookup_and_local_host(start_server: ServerFactory) -> None:
    expected, _ = socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)
    server = start_server("--reverse-lookup", "--", UCSPI_ENV)
    env, _ = read_env(server.port)
    assert env["TCPREMOTEHOST"] == env["TCPLOCALHOST"] == expected
    server = start_server("--reverse-lookup", "--local-host", "me.example", "--", UCSPI_ENV)
    env, _ = read_env(server.port)
    assert env["TCPLOCALHOST"] == env["TCP6LOCALHOST"] == "me.example"
    assert env["TCPREMOTEHOST"] == expected


def test_ipv6_client(start_server: ServerFactory) -> None:
    server = start_server("--", UCSPI_ENV, address="[::1]:0")
    env, (_, port) = read_env(server.port, "::1")
    assert env["PROTO"] == "TCP6"
    assert env["TCPREMOTEIP"] == env["TCP6REMOTEIP"] == "::1"
    assert env["TCPLOCALIP"] == "::1"
    assert env["TCPREMOTEPORT"] == str(port)


def test_ipv4_client_of_a_dual_stack_listener_looks_like_ipv4(
    start_server: ServerFactory,
) -> None:
    server = start_server("--", UCSPI_ENV, address="[::]:0")
    env, _ = read_env(server.port, "127.0.0.1")
    assert env["PROTO"] == "TCP"
    assert env["TCPREMOTEIP"] == env["TCPLOCALIP"] == "127.0.0.1"
    assert env["TCP6REMOTEIP"] == "::ffff:127.0.0.1"


def test_only_fds_0_1_2_reach_the_program(start_server: ServerFactory) -> None:
    """ls lists its own directory descriptor (3) too; nothing else may be open."""
    server = start_server("--", "ls", "/proc/self/fd")
    with connect(server.port) as sock:
        assert recv_all(sock).split() == [b"0", b"1", b"2", b"3"]


@pytest.mark.parametrize("limit", [[], ["--limit-nofile", "64"]])
def test_an_inherited_descriptor_reaches_no_program(
    start_server: ServerFactory, tmp_path: Path, limit: list[str]
) -> None:
    """A wrapper's lock (``exec 200>lock; flock 200; exec forkserve ...``) stays with
    forkserve: fd 200 is above a --limit-nofile of 64, and must be closed anyway."""
    lock = os.open(tmp_path / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.dup2(lock, 200)
        server = start_server(*limit, "--", "ls", "/proc/self/fd", pass_fds=[200])
    finally:
        os.close(200)
        os.close(lock)
    assert os.path.exists(f"/proc/{server.pid}/fd/200")  # the server holds it
    with connect(server.port) as sock:
        assert recv_all(sock).split() == [b"0", b"1", b"2", b"3"]


def no_eof_yet(sock: socket.socket, within: float = 0.5) -> bool:
    """Whether nothing (no byte, no EOF) arrives within ``within`` seconds."""
    sock.settimeout(within)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(WAIT)
    return False


def test_closing_stdout_alone_is_no_fin_since_stdin_is_the_same_socket(
    start_server: ServerFactory,
) -> None:
    """fd 0 and 1 are one socket: closing fd 1 drops one reference, and the client
    sees its end of data only when the program closes fd 0 too (or exits)."""
    server = start_server("--", "sh", "-c", "printf hi; exec 1>&-; cat >/dev/null")
    with connect(server.port) as sock:
        assert recv_exactly(sock, 2) == b"hi"
        assert no_eof_yet(sock)  # stdout is closed, stdin still open: no FIN
        sock.shutdown(socket.SHUT_WR)  # cat reads EOF, the program exits
        assert recv_all(sock) == b""
    server.wait_event("end", exit=0)


@pytest.mark.parametrize(
    "end_output",
    [
        "exec 0<&- 1>&-",  # close both descriptors
        # or shut the socket's sending side down, whatever else holds it
        f"{sys.executable} -c 'import socket; socket.socket(fileno=1).shutdown(socket.SHUT_WR)'",
    ],
)
def test_closing_stdin_and_stdout_or_shutdown_is_a_fin(
    start_server: ServerFactory, tmp_path: Path, end_output: str
) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    program = f"printf hi; {end_output}; read x < {fifo}; echo done >&2"
    server = start_server("--", "sh", "-c", program)
    with connect(server.port) as sock:
        assert recv_all(sock) == b"hi"  # EOF while the program still runs
        assert server.events("end") == []
        with fifo.open("w") as go:  # now let it finish
            go.write("\n")
    server.wait_event("end", exit=0)


def test_signals_are_default_and_unblocked(start_server: ServerFactory) -> None:
    server = start_server("--", "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status")
    with connect(server.port) as sock:
        text = recv_all(sock).decode()
    masks = dict(re.findall(r"Sig(Blk|Ign):\s+(\w+)", text))
    # Signals 32 and 33 are glibc's own (NPTL): applications cannot block or ignore
    # them through sigprocmask, and forkserve never touches them. Once, in a run from
    # a fresh clone, the program showed 32 blocked (mask 0x80000000); every signal an
    # application can use must be default and unblocked.
    glibc_internal = (1 << 31) | (1 << 32)
    assert int(masks["Blk"], 16) & ~glibc_internal == 0, masks
    assert int(masks["Ign"], 16) & ~glibc_internal == 0, masks


def test_program_writing_to_a_closed_socket_dies_of_sigpipe(
    start_server: ServerFactory,
) -> None:
    """The client closes first; the program then writes, as yes(1) does, forever.

    The first write draws a reset from the client's kernel; on a connection whose
    peer had closed (CLOSE_WAIT) Linux turns that into EPIPE, so the next write
    raises SIGPIPE. Python's SIG_IGN would make it an EPIPE error and exit 1.
    """
    server = start_server("--", "sh", "-c", "cat >/dev/null; exec yes")
    with connect(server.port):
        pass
    (end,) = server.wait_event("end")
    assert end["signal"] == "SIGPIPE(13)"


def test_program_gets_the_banner_first(start_server: ServerFactory) -> None:
    server = start_server("--banner", "220 ready\\r\\n", "--", "echo", "hi")
    with connect(server.port) as sock:
        assert recv_all(sock) == b"220 ready\r\nhi\n"


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (["no-such-program-anywhere"], "program 'no-such-program-anywhere' not found in PATH"),
        (["/nonexistent/prog"], "program '/nonexistent/prog' not found"),
        (["/"], "program '/' is a directory"),
    ],
)
def test_program_that_cannot_run_stops_the_server_at_once(program: list[str], message: str) -> None:
    result = run_cli(["serve", "0", "--print-port", "--", *program])
    assert result.returncode == 100
    assert result.stdout == b""
    assert result.stderr.decode() == f"forkserve serve: {message}\n"


def test_non_executable_file_stops_the_server(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run_cli(["serve", "0", "--", str(script)])
    assert result.returncode == 100
    assert result.stderr.decode() == f"forkserve serve: program '{script}' is not executable\n"


def test_program_deleted_after_start_up_fails_per_connection(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """Started with posix_spawn (no step before the program): the failed exec is one
    ``exec-failed`` line, no process ran. The fork path's ``end exit=111`` is in
    test_exec_spawn.py."""
    program = tmp_path / "hello"
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    server = start_server("--", str(program))
    program.unlink()
    with connect(server.port) as sock:
        assert recv_all(sock) == b""
    (failed,) = server.wait_event("exec-failed")
    assert failed["error"] == "ENOENT"
    assert failed["program"] == str(program)
    # The server keeps serving: once the program is back, connections work again.
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    with connect(server.port) as sock:
        assert recv_all(sock) == b"hello\n"
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"


@pytest.mark.parametrize("banner", [[], ["--banner", "hi\\n"]])
def test_script_without_interpreter_line_is_not_run_by_a_shell(
    start_server: ServerFactory, tmp_path: Path, banner: list[str]
) -> None:
    """execve gives ENOEXEC; forkserve never falls back to /bin/sh as execvp would,
    whether it spawns the program or forks first (a banner)."""
    program = tmp_path / "noshebang"
    program.write_text("echo from a shell\n")
    program.chmod(0o755)
    server = start_server(*banner, "--", str(program))
    with connect(server.port) as sock:
        assert recv_all(sock) == (b"hi\n" if banner else b"")
    (failed,) = server.wait_event("exec-failed")
    assert failed["error"] == "ENOEXEC"
    if banner:
        assert server.wait_event("end")[0]["exit"] == "111"


def test_program_is_found_once_in_path_at_start_up(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    shutil.copy(shutil.which("echo") or "/bin/echo", tmp_path / "my-echo")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    server = start_server("--", "my-echo", "found", env=env)
    with connect(server.port) as sock:
        assert recv_all(sock) == b"found\n"
    assert server.events("listen")[0]["program"] == "my-echo found"


def test_cat_with_real_clients(start_server: ServerFactory) -> None:
    server = start_server("--", "cat")
    payload = b"".join(b"line %d\n" % i for i in range(2000))
    socat = subprocess.run(
        ["socat", "-t", str(WAIT), "-", f"TCP:127.0.0.1:{server.port}"],
        input=payload,
        capture_output=True,
        timeout=WAIT,
        check=True,
    )
    assert socat.stdout == payload
    ncat = subprocess.run(
        ["ncat", "127.0.0.1", str(server.port)],
        input=payload,
        capture_output=True,
        timeout=WAIT,
        check=True,
    )
    assert ncat.stdout == payload
    ends = server.wait_event("end", count=2)
    assert [e.get("exit") for e in ends] == ["0", "0"]


@pytest.mark.skipif(shutil.which("tcpclient") is None, reason="tcpclient (ucspi-tcp) not installed")
def test_cat_with_tcpclient(start_server: ServerFactory) -> None:
    server = start_server("--", "cat")
    # tcpclient runs its program with the connection on fd 6 (read) and 7 (write).
    tcpclient = subprocess.run(
        [
            "tcpclient",
            "-RHl0",
            "127.0.0.1",
            str(server.port),
            "sh",
            "-c",
            'printf "via tcpclient\\n" >&7; head -n 1 <&6',
        ],
        capture_output=True,
        timeout=WAIT,
        check=True,
    )
    assert tcpclient.stdout == b"via tcpclient\n"
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"
