"""socketserver's request handler classes, unchanged: http.server, StreamRequestHandler
subclasses in a file, xmlrpc.server; served to curl, ab and xmlrpc.client (issue 15)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import xmlrpc.client
from pathlib import Path
from typing import cast

import pytest

from tests.integration.conftest import ServerFactory
from tests.support import WAIT, connect, recv_all, run_cli

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data"
SIMPLE_HTTP = "http.server:SimpleHTTPRequestHandler"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A directory to serve: a text file and 300 kB of random bytes."""
    (tmp_path / "hello.txt").write_bytes(b"hello from forkserve\n")
    (tmp_path / "blob.bin").write_bytes(os.urandom(300_000))
    return tmp_path


def curl(url: str, out: Path) -> str:
    """GET ``url`` into ``out``; return the HTTP status."""
    result = subprocess.run(
        ["curl", "-sS", "-m", str(WAIT), "-o", str(out), "-w", "%{http_code}", url],
        capture_output=True,
        timeout=WAIT,
        check=True,
    )
    return result.stdout.decode()


def test_simple_http_request_handler_serves_files_to_curl(
    serve: ServerFactory, site: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = serve("--handler", SIMPLE_HTTP, cwd=site)
    out = tmp_path_factory.mktemp("got")
    base = f"http://127.0.0.1:{server.port}"
    for name in ("hello.txt", "blob.bin"):
        assert curl(f"{base}/{name}", out / name) == "200"
        assert (out / name).read_bytes() == (site / name).read_bytes()
    assert curl(f"{base}/missing", out / "missing") == "404"
    assert curl(f"{base}/", out / "index") == "200"
    assert b'<a href="blob.bin">' in (out / "index").read_bytes()
    ends = server.wait_event("end", count=4)
    assert [end["exit"] for end in ends] == ["0"] * 4
    assert '"GET /hello.txt HTTP/1.1" 200' in server.log_text()  # http.server's own line


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) not installed")
def test_ab_loses_nothing(serve: ServerFactory, site: Path) -> None:
    server = serve("--handler", SIMPLE_HTTP, "-q", cwd=site)
    url = f"http://127.0.0.1:{server.port}"
    result = subprocess.run(
        ["ab", "-n", "1000", "-c", "10", "-s", str(int(WAIT)), "-r", f"{url}/hello.txt"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    report = result.stdout.decode()
    assert re.search(r"^Complete requests:\s+1000$", report, re.M), report
    assert re.search(r"^Failed requests:\s+0$", report, re.M), report
    assert re.search(r"^Non-2xx responses:", report, re.M) is None, report
    assert re.search(r"^Document Length:\s+21 bytes$", report, re.M), report


def test_stream_request_handler_from_a_file(serve: ServerFactory) -> None:
    server = serve("--handler", f"{DATA / 'stream_upper.py'}:Upper")
    with connect(server.port) as sock:
        local = sock.getsockname()
        sock.sendall(b"one\ntwo\n")
        sock.shutdown(socket.SHUT_WR)
        lines = recv_all(sock).decode().splitlines()
    assert lines[0] == (
        f"peer={local[0]}:{local[1]} server=127.0.0.1:{server.port} server_port={server.port}"
        " nodelay=1 timeout=None class=Upper steps=setup,handle"
    )
    assert lines[1:] == ["ONE", "TWO", "finish"]
    assert server.wait_event("end")[0]["exit"] == "0"


def test_the_class_timeout_ends_a_silent_client_with_exit_124(serve: ServerFactory) -> None:
    server = serve("--handler", f"{DATA / 'stream_upper.py'}:Slow")
    with connect(server.port) as sock:
        (end,) = server.wait_event("end")
        assert recv_all(sock) == b""
    assert end["exit"] == "124"


def test_an_exception_in_a_handler_class_is_a_handler_error(serve: ServerFactory) -> None:
    server = serve("--handler", f"{DATA / 'stream_upper.py'}:Raises")
    with connect(server.port) as sock:
        assert recv_all(sock) == b"about to fail\n"
    assert server.wait_event("end")[0]["exit"] == "1"
    assert "ValueError: handler class bug" in server.log_text()


def test_xmlrpc_request_handler_answers_xmlrpc_client(serve: ServerFactory, mode: str) -> None:
    server = serve("--handler", f"{DATA / 'rpc_server.py'}:handler", "-q")
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.port}/RPC2")
    assert proxy.pow(2, 10) == 1024
    assert proxy.upper("fork", "serve") == "FORK SERVE"
    assert {"pow", "pid", "upper"} <= set(cast("list[str]", proxy.system.listMethods()))
    with pytest.raises(xmlrpc.client.Fault, match='method "nosuch" is not supported'):
        proxy.nosuch()
    pids = {proxy.pid() for _ in range(3)}
    assert server.pid not in pids
    if mode == "fork":
        assert len(pids) == 3  # a process per connection


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"{DATA / 'stream_upper.py'}:NotAHandler", "is a class that is neither"),
        ("http.server:HTTPServer", "is a server class: name its request handler class"),
    ],
)
def test_a_class_that_is_no_handler_exits_100_with_one_line(spec: str, message: str) -> None:
    result = run_cli(["serve", "0", "--print-port", "--handler", spec])
    stderr = result.stderr.decode()
    assert result.returncode == 100, stderr
    assert result.stdout == b""
    assert stderr.count("\n") == 1, stderr
    assert message in stderr


def test_the_example_serves_its_class_through_the_python_api(
    start_server: ServerFactory,
) -> None:
    example = ROOT / "examples" / "stream_upper.py"
    server = start_server(command=[sys.executable, str(example), "127.0.0.1:0"])
    with connect(server.port) as sock:
        sock.sendall(b"hello\nworld\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"HELLO\nWORLD\n"
    assert server.wait_event("end")[0]["exit"] == "0"
    assert server.stop() == 0


def test_a_partial_of_a_handler_class_through_the_python_api(
    start_server: ServerFactory, site: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    script = DATA / "api_server.py"
    env = {**os.environ, "SITE": str(site)}
    server = start_server(
        command=[sys.executable, str(script), "http_site", "127.0.0.1:0"], env=env
    )
    out = tmp_path_factory.mktemp("got") / "blob.bin"
    assert curl(f"http://127.0.0.1:{server.port}/blob.bin", out) == "200"
    assert out.read_bytes() == (site / "blob.bin").read_bytes()
