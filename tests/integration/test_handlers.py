"""--handler: built-in services, the examples, and every way a name can be wrong."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from forkserve.child.builtins import chargen_line
from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all, recv_exactly, run_cli

ROOT = Path(__file__).parents[2]


def test_discard_reads_and_drops_until_eof(start_server: ServerFactory) -> None:
    server = start_server("--handler", "discard")
    with connect(server.port) as sock:
        sock.sendall(b"x" * 1_000_000)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"


def test_daytime_sends_one_date_line_then_closes(start_server: ServerFactory) -> None:
    server = start_server("--handler", "daytime")
    with connect(server.port) as sock:
        data = recv_all(sock)
    assert re.fullmatch(rb"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\r\n", data), data
    assert server.wait_event("end")[0]["exit"] == "0"


def test_chargen_streams_rfc_864_lines_until_the_client_closes(
    start_server: ServerFactory,
) -> None:
    server = start_server("--handler", "chargen")
    with connect(server.port) as sock:
        sock.sendall(b"input is thrown away\n")
        data = recv_exactly(sock, 300 * 74)
    assert data.splitlines(keepends=True) == [chargen_line(n) for n in range(300)]
    (end,) = server.wait_event("end")
    assert end["exit"] == "0"  # the client's reset ends it quietly


def test_chargen_keeps_sending_after_the_client_half_closes(
    start_server: ServerFactory,
) -> None:
    server = start_server("--handler", "chargen")
    with connect(server.port) as sock:
        sock.shutdown(socket.SHUT_WR)
        assert len(recv_exactly(sock, 100_000)) == 100_000
    assert server.wait_event("end")[0]["exit"] == "0"


def test_echo_by_name_with_a_banner(start_server: ServerFactory) -> None:
    server = start_server("--handler", "echo", "--banner", "hello\\n")
    with connect(server.port) as sock:
        sock.sendall(b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"hello\nping"


def test_kv_example_from_the_repository_root(start_server: ServerFactory) -> None:
    server = start_server("--handler", "examples.kv:handle", cwd=ROOT)
    with connect(server.port) as sock:
        sock.sendall(b"SET colour blue sky\r\nGET colour\nKEYS\nDEL colour\nGET colour\n")
        sock.sendall(b"NOPE\nQUIT\nSET never reached\n")
        replies = recv_all(sock)
    assert replies.decode().splitlines() == [
        "OK",
        "VALUE blue sky",
        "KEYS colour",
        "DELETED",
        "NOT_FOUND",
        "ERROR unknown command 'NOPE'",
        "BYE",
    ]
    # Each connection has its own store.
    with connect(server.port) as sock:
        sock.sendall(b"KEYS\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"KEYS\r\n"


def test_kv_example_with_ncat(start_server: ServerFactory) -> None:
    server = start_server("--handler", "examples/kv.py:handle", cwd=ROOT)
    ncat = subprocess.run(
        ["ncat", "127.0.0.1", str(server.port)],
        input=b"SET a 1\nGET a\n",
        capture_output=True,
        timeout=WAIT,
        check=True,
    )
    assert ncat.stdout == b"OK\r\nVALUE 1\r\n"


def test_httpd_example_with_curl(start_server: ServerFactory) -> None:
    server = start_server("--handler", "examples/httpd.py:handle", cwd=ROOT)
    url = f"http://127.0.0.1:{server.port}"
    pids = set()
    for _ in range(2):
        page = subprocess.run(
            ["curl", "-sS", "--max-time", str(WAIT), f"{url}/"],
            capture_output=True,
            timeout=WAIT,
            check=True,
        ).stdout.decode()
        assert page.startswith("hello from process ")
        assert "you are 127.0.0.1 port " in page
        pids.add(page.split()[3].rstrip(";"))
    assert len(pids) == 2  # a process per connection
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/missing"],
        capture_output=True,
        timeout=WAIT,
        check=True,
    ).stdout
    assert status == b"404"
    with connect(server.port) as sock:
        sock.sendall(b"garbage\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.0 400 Bad Request\r\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--handler", "nosuch"], "unknown handler 'nosuch'"),
        (["--handler", "no_such_mod:handle"], "cannot import handler module 'no_such_mod'"),
        (["--handler", "examples.kv:nothing"], "'examples.kv' has no 'nothing'"),
        (["--handler", "examples.kv:MAX_LINE"], "is not callable (it is a int)"),
        (["--handler", "missing/file.py:f"], "no such file"),
        (["--handler", "echo", "--", "cat"], "--handler and '-- PROGRAM' cannot be used"),
        (["--reverse-lookup"], "--reverse-lookup sets UCSPI variables: it needs '-- PROGRAM'"),
        (["--local-host", "x"], "--local-host sets UCSPI variables"),
        (["--banner", "a\\qb"], "argument --banner: invalid escape '\\q': use"),
        (["--reject-message", "a\\qb"], "argument --reject-message: invalid escape '\\q'"),
        (["--"], "'--' must be followed by a PROGRAM"),
        (["--", ""], "empty program name"),
        (["--mode", "prefork", "--", "cat"], "exec mode needs --mode fork"),
    ],
)
def test_bad_service_options_exit_100_with_one_line(args: list[str], message: str) -> None:
    result = run_cli(["serve", "0", "--print-port", *args], cwd=ROOT)
    stderr = result.stderr.decode()
    assert result.returncode == 100, stderr
    assert result.stdout == b""
    assert stderr.count("\n") == 1, stderr
    assert message in stderr
    assert "Traceback" not in stderr


def test_prefork_workers_run_a_handler_by_name_with_the_banner(
    start_server: ServerFactory,
) -> None:
    server = start_server(
        "--mode", "prefork", "--handler", "examples.kv:handle", "--banner", "kv\\r\\n", cwd=ROOT
    )
    for _ in range(2):
        with connect(server.port) as sock:
            sock.sendall(b"SET a 1\nGET a\nQUIT\n")
            assert recv_all(sock) == b"kv\r\nOK\r\nVALUE 1\r\nBYE\r\n"


def test_dashes_belong_to_serve_only() -> None:
    result = run_cli(["client", "127.0.0.1", "1", "--", "cat"])
    assert result.returncode == 100
    assert b"'--' introduces a PROGRAM for 'serve'" in result.stderr


def test_module_raising_on_import_one_line_or_traceback_at_v(tmp_path: Path) -> None:
    (tmp_path / "broken_handler.py").write_text("1 / 0\n")
    result = run_cli(["serve", "0", "--handler", "broken_handler:h"], cwd=tmp_path)
    assert result.returncode == 100
    assert result.stderr.decode() == (
        "forkserve serve: importing handler module 'broken_handler' failed: "
        "ZeroDivisionError: division by zero\n"
    )
    verbose = run_cli(["serve", "0", "-v", "--handler", "broken_handler:h"], cwd=tmp_path)
    assert verbose.returncode == 100
    assert b"Traceback" in verbose.stderr
    assert verbose.stderr.decode().endswith("ZeroDivisionError: division by zero\n")


def test_api_program_and_banner(start_server: ServerFactory) -> None:
    script = ROOT / "tests" / "data" / "api_server.py"
    server = start_server(command=[sys.executable, str(script), "program", "127.0.0.1:0"])
    with connect(server.port) as sock:
        sock.sendall(b"via exec\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"banner\nvia exec\n"
    assert server.wait_event("end")[0]["exit"] == "0"
