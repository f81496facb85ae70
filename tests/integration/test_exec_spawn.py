"""Exec mode's two ways to start a program: posix_spawn from the supervisor, or a
fork that runs Python steps (banner, limits, handshake wait, PROXY, TLS, reverse
lookups) and then execs. Whichever way, the program gets the same process: the same
environment, descriptors 0, 1 and 2 only, default signals and an empty mask, a
process group of its own, and the same ``end`` line.

The ``listen`` line says which way a server starts its programs (``start=``). A
banner forces the fork path here: the client strips it from what it reads.
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ServerFactory
from tests.integration.test_metrics import METRICS, scrape
from tests.support import WAIT, ServerProcess, connect, process_alive, recv_all, wait_until

BANNER = b"banner\n"
PATHS = {"spawn": [], "fork": ["--banner", "banner\\n"]}

# The probe: read a word from the client, then show one side of the process it was
# started as. ``exec`` makes the shown process the program itself (after exec a
# caught signal is default again, an ignored one stays ignored, the mask and the
# descriptors are kept), so the shell's own habits (dash catches SIGINT and SIGCHLD)
# do not show; the environment is read from the shell's own /proc entry, which is
# exactly what forkserve passed to execve. (cat, not grep: GNU grep catches SIGSEGV.)
PROBE = r"""read what
case $what in
fds) exec ls /proc/self/fd ;;
signals) exec cat /proc/self/status ;;
stat) exec cat /proc/self/stat ;;
env) cat /proc/$$/environ ;;
exit) exit 3 ;;
kill) kill -TERM $$ ;;
esac"""
# Signals 32 and 33 are glibc's own (NPTL): see test_exec.py.
GLIBC_INTERNAL = (1 << 31) | (1 << 32)
# A descriptor forkserve inherits and keeps (a wrapper's ``exec 200>lock``): not
# close-on-exec, so it reaches no program only if forkserve closes it for each.
INHERITED_FD = 200


def start_probe(
    start_server: ServerFactory, path: str, tmp_path: Path, *extra: str
) -> ServerProcess:
    lock = os.open(tmp_path / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.dup2(lock, INHERITED_FD)
        server = start_server(*PATHS[path], *extra, "--", "sh", "-c", PROBE, pass_fds=[200])
    finally:
        os.close(INHERITED_FD)
        os.close(lock)
    (listen,) = server.wait_event("listen")
    assert listen["start"] == path
    return server


def ask(server: ServerProcess, path: str, what: str) -> tuple[bytes, tuple[str, int]]:
    """The probe's answer to ``what`` (the banner stripped), and our address."""
    with connect(server.port) as sock:
        address = sock.getsockname()
        sock.sendall(what.encode() + b"\n")
        data = recv_all(sock)
    if path == "fork":
        assert data.startswith(BANNER)
        data = data[len(BANNER) :]
    return data, (address[0], address[1])


@pytest.mark.parametrize("path", PATHS)
def test_the_program_gets_a_fresh_process(
    start_server: ServerFactory, tmp_path: Path, path: str
) -> None:
    server = start_probe(start_server, path, tmp_path)
    fds, _ = ask(server, path, "fds")
    assert fds.split() == [b"0", b"1", b"2", b"3"]  # 3: ls's own directory
    text, _ = ask(server, path, "signals")
    found = re.findall(r"^Sig(Blk|Ign|Cgt):\s+(\w+)$", text.decode(), re.MULTILINE)
    masks = {name: int(value, 16) for name, value in found}
    assert masks.keys() == {"Blk", "Ign", "Cgt"}
    assert {name: mask & ~GLIBC_INTERNAL for name, mask in masks.items()} == dict.fromkeys(
        masks, 0
    ), masks
    stat, _ = ask(server, path, "stat")
    fields = stat.decode()[stat.decode().rindex(")") + 2 :].split()
    ppid, pgrp, session = int(fields[1]), int(fields[2]), int(fields[3])
    pid = int(stat.split()[0])
    # Spawned by the server itself; forked by its forker (parent.forker) otherwise.
    assert ppid == (server.pid if path == "spawn" else one_of(server.forkers()))
    assert pgrp == pid  # a process group of its own, led by the program
    assert session == os.getsid(server.pid)
    ends = server.wait_event("end", count=3)
    assert [end["exit"] for end in ends] == ["0", "0", "0"]


def one_of(pids: list[int]) -> int:
    assert len(pids) == 1, pids
    return pids[0]


def environment_of(server: ServerProcess, path: str) -> dict[str, str]:
    """The probe's environment, with the ports (which differ from run to run) checked
    against the server's and the client's, then taken out."""
    data, (_, client_port) = ask(server, path, "env")
    env = dict(item.split("=", 1) for item in data.decode().split("\0") if item)
    for prefix in ("TCP", "TCP6"):
        assert env.pop(prefix + "LOCALPORT") == str(server.port)
        assert env.pop(prefix + "REMOTEPORT") == str(client_port)
    return env


def test_both_paths_give_the_same_environment(start_server: ServerFactory, tmp_path: Path) -> None:
    stale = {**os.environ, "TCPREMOTEHOST": "stale", "SSL_CLIENT_S_DN": "stale", "X": "kept"}
    found = {}
    for path, args in PATHS.items():
        server = start_server(
            *args, "--local-host", "me.example", "--", "sh", "-c", PROBE, env=stale
        )
        found[path] = environment_of(server, path)
    assert found["spawn"] == found["fork"]
    env = found["spawn"]
    assert env["X"] == "kept"
    assert "TCPREMOTEHOST" not in env
    assert "SSL_CLIENT_S_DN" not in env
    assert (env["PROTO"], env["TCPLOCALHOST"], env["TCPCONNNUM"]) == ("TCP", "me.example", "0")


@pytest.mark.parametrize("path", PATHS)
def test_both_paths_log_the_same_end(
    start_server: ServerFactory, tmp_path: Path, path: str
) -> None:
    server = start_probe(start_server, path, tmp_path)
    ask(server, path, "exit")
    (end,) = server.wait_event("end")
    assert end["exit"] == "3"
    (accept,) = server.events("accept")
    assert accept["pid"] == end["pid"]
    ask(server, path, "kill")
    ends = server.wait_event("end", count=2)
    assert ends[1]["signal"] == "SIGTERM(15)"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        ([], "spawn"),
        (["--local-host", "me.example"], "spawn"),  # a value, not a lookup
        (["--max-lifetime", "5"], "spawn"),  # the supervisor's timer, not the child's
        (["--banner", "hi"], "fork"),
        (["--handshake-timeout", "5"], "fork"),
        (["--limit-nofile", "256"], "fork"),
        (["--reverse-lookup"], "fork"),
        (["--proxy-protocol", "v1"], "fork"),
    ],
)
def test_the_listen_line_says_how_programs_start(
    start_server: ServerFactory, args: list[str], start: str
) -> None:
    server = start_server(*args, "--", "cat")
    (listen,) = server.wait_event("listen")
    assert listen["start"] == start


def test_tls_forks_for_the_relay(
    start_server: ServerFactory, certs: dict[str, tuple[Path, Path]]
) -> None:
    cert, key = certs["server"]
    server = start_server("--tls-cert", str(cert), "--tls-key", str(key), "--", "cat")
    assert server.wait_event("listen")[0]["start"] == "fork"


def test_a_python_handler_has_no_start_field(start_server: ServerFactory) -> None:
    server = start_server()
    assert "start" not in server.wait_event("listen")[0]


def unrunnable(program: Path, how: str) -> str:
    """Make ``program`` unrunnable ``how``; return the errno name exec fails with."""
    if how == "removed":
        program.unlink()
        return "ENOENT"
    program.chmod(0o644)
    return "EACCES"


@pytest.mark.parametrize("how", ["removed", "not-executable"])
def test_a_spawn_that_cannot_exec_logs_one_line_and_serving_goes_on(
    start_server: ServerFactory, tmp_path: Path, how: str
) -> None:
    """No process ran the program (posix_spawn reaped the one it made): one
    ``exec-failed`` line, no ``accept`` or ``end``, and the next client is served."""
    program = tmp_path / "hello"
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    server = start_server("--", str(program))
    assert server.wait_event("listen")[0]["start"] == "spawn"
    error = unrunnable(program, how)
    for _ in range(2):
        with connect(server.port) as sock:
            assert recv_all(sock) == b""
    failed = server.wait_event("exec-failed", count=2)
    assert [(f["error"], f["program"]) for f in failed] == [(error, str(program))] * 2
    assert "pid" not in failed[0]
    assert failed[0]["peer"].startswith("127.0.0.1:")
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    with connect(server.port) as sock:
        assert recv_all(sock) == b"hello\n"
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"
    assert [a["pid"] for a in server.events("accept")] == [end["pid"]]
    assert server.events("fork-failed") == []
    assert server.events("accept-paused") == []


def test_a_spawn_that_cannot_exec_counts_as_rejected(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """In the metrics too: rejected for ``exec-failed``, never accepted or active."""
    program = tmp_path / "hello"
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    server = start_server(*METRICS, "--", str(program))
    program.unlink()
    with connect(server.port) as sock:
        assert recv_all(sock) == b""
    server.wait_event("exec-failed")
    found = scrape(server)
    assert found["forkserve_connections_rejected_total", "reason=exec-failed"] == 1
    assert found["forkserve_connections_accepted_total", ""] == 0
    assert found["forkserve_connections_active", ""] == 0


def test_a_forked_child_that_cannot_exec_exits_111(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    program = tmp_path / "hello"
    program.write_text("#!/bin/sh\necho hello\n")
    program.chmod(0o755)
    server = start_server(*PATHS["fork"], "--", str(program))
    program.unlink()
    with connect(server.port) as sock:
        assert recv_all(sock) == BANNER
    (failed,) = server.wait_event("exec-failed")
    assert failed["error"] == "ENOENT"
    (end,) = server.wait_event("end")
    assert (end["exit"], end["pid"]) == ("111", failed["pid"])


def test_a_spawn_without_processes_left_pauses_accepting_as_a_failed_fork(
    start_server: ServerFactory,
) -> None:
    """RLIMIT_NPROC (root ignores it: the server drops to nobody) makes posix_spawn
    fail with EAGAIN: the client is closed, accepting pauses; once the limit is
    raised, clients are served again.

    The soft limit is 1 (the server itself), the hard one as it was, so that a
    process of the same user may raise it again (prlimit(2): this test process may
    lack CAP_SYS_RESOURCE).
    """
    nobody = pwd.getpwnam("nobody")

    def one_process() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))

    def as_nobody() -> None:
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    server = start_server("--user", nobody.pw_name, "--", "cat", preexec_fn=one_process)
    assert server.wait_event("listen")[0]["start"] == "spawn"
    with connect(server.port) as sock:
        assert recv_all(sock) == b""
    (failed,) = server.wait_event("fork-failed")
    assert failed["error"] == "EAGAIN"
    server.wait_event("accept-paused")
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    value = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    subprocess.run(
        ["prlimit", "--pid", str(server.pid), f"--nproc={value}:{value}"],
        preexec_fn=as_nobody,
        check=True,
        timeout=WAIT,
    )
    with connect(server.port) as sock:
        sock.sendall(b"back\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"back\n"
    assert server.wait_event("end")[0]["exit"] == "0"
    assert server.events("exec-failed") == []


GRANDCHILD = "sleep 60 & echo $!; wait"


@pytest.mark.parametrize("path", PATHS)
def test_max_lifetime_ends_the_program_and_its_group(
    start_server: ServerFactory, path: str
) -> None:
    server = start_server(*PATHS[path], "--max-lifetime", "0.5", "--", "sh", "-c", GRANDCHILD)
    with connect(server.port) as sock:
        data = recv_all(sock)
    sleeper = int(data.removeprefix(BANNER))
    (end,) = server.wait_event("end")
    assert end["signal"] == "SIGTERM(15)"
    wait_until(lambda: not process_alive(sleeper), what="the program's own child gone")


@pytest.mark.parametrize("path", PATHS)
def test_a_fast_stop_ends_the_program_and_its_group(start_server: ServerFactory, path: str) -> None:
    server = start_server(*PATHS[path], "--", "sh", "-c", GRANDCHILD)
    with connect(server.port) as sock:
        line = b""
        while not line.endswith(b"\n") or line == BANNER:
            chunk = sock.recv(100)
            assert chunk
            line += chunk
        sleeper = int(line.removeprefix(BANNER))
        assert server.stop(signal.SIGQUIT) == 0
    (end,) = server.events("end")
    assert end["signal"] == "SIGTERM(15)"
    wait_until(lambda: not process_alive(sleeper), what="the program's own child gone")


def test_a_reload_decides_again(start_server: ServerFactory, tmp_path: Path) -> None:
    """The way programs start is decided for each configuration: a banner added by
    SIGHUP needs a fork, and taking it away again spawns."""
    config = tmp_path / "f.toml"
    config.write_text('banner = "hi\\n"\n')
    server = start_server("--config", str(config), "--", "echo", "there")
    assert server.wait_event("listen")[0]["start"] == "fork"
    for count, (text, start, greeting) in enumerate(
        [("", "spawn", b""), ('banner = "hi\\n"\n', "fork", b"hi\n")], start=1
    ):
        config.write_text(text)
        server.send_signal(signal.SIGHUP)
        assert server.wait_event("reload", count=count)[-1]["start"] == start
        with connect(server.port) as sock:
            assert recv_all(sock) == greeting + b"there\n"


@pytest.mark.parametrize("path", PATHS)
def test_a_server_started_without_stdin_still_gives_0_1_2(
    start_server: ServerFactory, path: str
) -> None:
    """fd 0 closed when forkserve starts: its own descriptors take the low numbers,
    and the program must still get the connection on 0 and 1 and nothing else."""

    def no_stdin() -> None:
        os.close(0)

    server = start_server(*PATHS[path], "--", "ls", "/proc/self/fd", preexec_fn=no_stdin)
    assert server.wait_event("listen")[0]["start"] == path
    with connect(server.port) as sock:
        data = recv_all(sock)
    assert data.removeprefix(BANNER).split() == [b"0", b"1", b"2", b"3"]
