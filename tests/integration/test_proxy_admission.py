"""Behind the PROXY protocol, access rules and per-source limits judge the client the
header advertises, never the balancer (issue 12, finding 1).

Every test client here connects from 127.0.0.1 (the "balancer") and advertises
another address in a real v1 or v2 header; each connection advertises its own
source port, so its log lines can be told apart.
"""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from forkserve.core.proxynet import encode_v1, encode_v2
from tests.integration.conftest import ServerFactory
from tests.integration.test_metrics import scrape
from tests.integration.test_tls import client_context, tls_args
from tests.support import ServerProcess, connect, recv_all

A, B = "203.0.113.1", "198.51.100.2"
PORTS = itertools.count(20000)

# A handler that records that it ran, greets with the peer and RELAYCLIENT, then
# echoes; "crash" makes it die by SIGKILL, as a handler crash would end it.
HANDLER = """\
import os
from pathlib import Path

RAN = Path(__file__).parent / "ran.log"


def handle(conn, peer):
    with RAN.open("a") as ran:
        ran.write(peer[0] + "\\n")
    relay = os.environ.get("RELAYCLIENT", "<unset>")
    conn.sendall(f"{peer[0]}:{peer[1]} RELAYCLIENT={relay}\\n".encode())
    while data := conn.recv(100):
        if data.startswith(b"crash"):
            os.kill(os.getpid(), 9)
        conn.sendall(data)
"""
# The async-mode twin: the peer is the writer's peername, the variables its "env".
ASYNC_HANDLER = """\
import os
from pathlib import Path

RAN = Path(__file__).parent / "ran.log"


async def handle(reader, writer):
    host, port = writer.get_extra_info("peername")[:2]
    with RAN.open("a") as ran:
        ran.write(host + "\\n")
    relay = writer.get_extra_info("env", {}).get("RELAYCLIENT", "<unset>")
    writer.write(f"{host}:{port} RELAYCLIENT={relay}\\n".encode())
    while data := await reader.read(100):
        if data.startswith(b"crash"):
            os.kill(os.getpid(), 9)
        writer.write(data)
        await writer.drain()
"""
# The exec-mode twin: records, prints what the program was given, holds until EOF.
PROGRAM = (
    'echo "$TCPREMOTEIP" >> "$0"; '
    'echo "$TCPREMOTEIP:$TCPREMOTEPORT RELAYCLIENT=${RELAYCLIENT-<unset>} N=$TCPCONNNUM"; '
    "cat >/dev/null"
)
RELAY_RULES = '127.0.0.1:allow,RELAYCLIENT=""\n:deny\n'


def header(version: str, host: str, port: int) -> bytes:
    encode = encode_v1 if version == "v1" else encode_v2
    return encode((host, port), ("192.0.2.1", 25))


@pytest.fixture
def handler(tmp_path: Path, mode: str) -> list[str]:
    """The --handler arguments for ``mode``: HANDLER, or its async twin."""
    path = tmp_path / "proxyhandler.py"
    path.write_text(ASYNC_HANDLER if mode == "async" else HANDLER)
    return ["--handler", f"{path}:handle"]


def ran(tmp_path: Path) -> list[str]:
    """The client hosts the handler or program ran for, in order."""
    path = tmp_path / "ran.log"
    return path.read_text().split() if path.exists() else []


def open_as(port: int, version: str, host: str) -> tuple[socket.socket, bytes, str]:
    """Connect from 127.0.0.1 advertising ``host``; return the socket, what came
    first (the greeting line, a reject message, or b"" when cut), and the peer."""
    peer = (host, next(PORTS))
    sock = connect(port)
    sock.sendall(header(version, *peer))
    first = b""
    try:
        while not first.endswith(b"\n") and (chunk := sock.recv(1)):
            first += chunk
    except ConnectionResetError:
        first = b""
    return sock, first, f"{host}:{peer[1]}"


def greeting(peer: str, relay: str = "<unset>") -> bytes:
    """The handler's first line for a client advertised as ``peer`` (HOST:PORT)."""
    return f"{peer} RELAYCLIENT={relay}\n".encode()


def held(server: ServerProcess, version: str, host: str) -> tuple[socket.socket, str]:
    """A connection advertised from ``host`` that the handler is serving now."""
    sock, first, peer = open_as(server.port, version, host)
    assert first == greeting(peer), (first, server.log_text())
    return sock, peer


def refused(server: ServerProcess, version: str, host: str, message: bytes = b"") -> str:
    """A connection advertised from ``host`` that is refused; returns its peer."""
    sock, first, peer = open_as(server.port, version, host)
    with sock:
        assert first == message, (first, server.log_text())
        try:
            assert recv_all(sock) == b""
        except ConnectionResetError:
            pass
    return peer


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_rules_and_their_variables_follow_the_advertised_client(
    handler: list[str], serve: ServerFactory, tmp_path: Path, version: str
) -> None:
    rules = tmp_path / "relay.rules"
    rules.write_text(RELAY_RULES)
    server = serve("--proxy-protocol", version, "--rules", str(rules), *handler)
    peer = refused(server, version, "203.0.113.9")
    (deny,) = server.wait_event("deny")
    assert deny["peer"] == peer
    assert deny["rule"] == f"{rules}:2"
    sock, first, peer = open_as(server.port, version, "127.0.0.1")
    with sock:
        assert first == greeting(peer, relay="")  # set, and empty
    assert ran(tmp_path) == ["127.0.0.1"]  # the denied client cost no handler


def test_exec_program_never_runs_for_a_denied_client(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "relay.rules"
    rules.write_text('127.0.0.1:allow,RELAYCLIENT=""\n198.51.100.0/24:allow\n:deny\n')
    record = str(tmp_path / "ran.log")
    server = start_server(
        "--proxy-protocol", "any", "--rules", str(rules), "--", "sh", "-c", PROGRAM, record
    )
    denied = refused(server, "v1", "203.0.113.9")
    assert server.wait_event("deny")[0]["peer"] == denied
    # TCPCONNNUM counts the connections already open from the advertised client.
    first, line, peer = open_as(server.port, "v2", "127.0.0.1")
    assert line == f"{peer} RELAYCLIENT= N=0\n".encode()
    other, line, other_peer = open_as(server.port, "v1", B)
    assert line == f"{other_peer} RELAYCLIENT=<unset> N=0\n".encode()
    second, line, second_peer = open_as(server.port, "v1", "127.0.0.1")
    assert line == f"{second_peer} RELAYCLIENT= N=1\n".encode()
    for sock in (first, other, second):
        sock.close()
    for each in (peer, other_peer, second_peer):
        assert server.wait_event("end", peer=each)[0]["exit"] == "0"
    assert server.wait_event("end", peer=denied)[0]["exit"] == "125"
    assert ran(tmp_path) == ["127.0.0.1", B, "127.0.0.1"]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_deny_fires_for_the_advertised_client(
    handler: list[str], serve: ServerFactory, tmp_path: Path, version: str, mode: str
) -> None:
    server = serve(
        "--proxy-protocol",
        version,
        "--deny",
        "203.0.113.0/24",
        "--metrics",
        "127.0.0.1:0",
        *handler,
    )
    peer = refused(server, version, "203.0.113.5")
    (deny,) = server.wait_event("deny")
    assert (deny["peer"], deny["rule"]) == (peer, "--deny=203.0.113.0/24")
    sock, _ = held(server, version, "198.51.100.7")
    sock.close()
    assert ran(tmp_path) == ["198.51.100.7"]
    if mode != "async":  # async: the header is read before the accept is reported,
        # so a denied client has its deny line and no accept or end (see README)
        server.wait_event("end", peer=peer)  # the denied connection's end names its client
    assert scrape(server)["forkserve_connections_rejected_total", "reason=deny"] == 1


def test_per_ip_counts_the_advertised_client_and_releases_it(
    handler: list[str], serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(
        "--proxy-protocol",
        "any",
        "--per-ip",
        "2",
        "--reject-message",
        "busy\\r\\n",
        *handler,
    )
    first, first_peer = held(server, "v2", A)
    second, second_peer = held(server, "v2", A)
    peer = refused(server, "v2", A, b"busy\r\n")
    (reject,) = server.wait_event("reject", reason="per-ip")
    assert reject["peer"] == peer
    other, _ = held(server, "v1", B)  # another client is not held to A's count
    first.close()
    server.wait_event("end", peer=first_peer)
    again, _ = held(server, "v1", A)  # released on the key it was counted under
    second.sendall(b"crash")
    server.wait_event("end", peer=second_peer, signal="SIGKILL(9)")
    after_crash, _ = held(server, "v2", A)  # released after a crash too
    refused(server, "v1", A, b"busy\r\n")  # and not released twice
    for sock in (second, other, again, after_crash):
        sock.close()
    assert ran(tmp_path).count(A) == 4


def test_rate_spent_by_one_client_refuses_no_other(
    handler: list[str], serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve("--proxy-protocol", "any", "--rate", "2/60", *handler)
    for version in ("v1", "v2"):
        sock, _ = held(server, version, A)
        sock.close()
    peer = refused(server, "v2", A)
    (reject,) = server.wait_event("reject", reason="rate")
    assert reject["peer"] == peer
    sock, _ = held(server, "v1", B)
    sock.close()
    assert ran(tmp_path) == [A, A, B]


def test_health_check_without_a_client_is_judged_on_the_balancer(
    handler: list[str], serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve("--proxy-protocol", "v2", "--deny", "127.0.0.1", *handler)
    with connect(server.port) as sock:
        sock.sendall(encode_v2(None, None))
        try:
            assert recv_all(sock) == b""
        except ConnectionResetError:
            pass
    (deny,) = server.wait_event("deny")
    assert deny["peer"].startswith("127.0.0.1:")
    sock, _ = held(server, "v2", B)
    sock.close()
    assert ran(tmp_path) == [B]


def test_a_connection_counts_once_its_header_names_the_client(serve: ServerFactory) -> None:
    """Until its header is read a connection counts against no source (the balancer's
    address included); --max-conns and --handshake-timeout bound that time."""
    server = serve("--proxy-protocol", "v1", "--per-ip", "1")
    # Two silent connections from 127.0.0.1, then one that names its client.
    with connect(server.port), connect(server.port), connect(server.port) as sock:
        sock.sendall(header("v1", A, 1) + b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ping"


def test_rules_and_limits_come_before_the_tls_handshake(
    serve: ServerFactory,
    certs: dict[str, tuple[Path, Path]],
) -> None:
    server = serve(
        *tls_args(certs), "--proxy-protocol", "v2", "--deny", "203.0.113.0/24", "--rate", "1/60"
    )
    with connect(server.port) as raw:  # refused at once: no ClientHello is awaited
        raw.sendall(header("v2", "203.0.113.5", 1))
        assert recv_all(raw) == b""
    assert server.wait_event("deny")[0]["peer"] == "203.0.113.5:1"
    context = client_context(certs)
    for expected in (b"ping", b""):  # the second one is past the rate: refused too
        raw = connect(server.port)
        raw.sendall(header("v2", B, 2))
        if expected:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"ping")
                assert tls.recv(4) == b"ping"
        else:
            with raw:
                assert recv_all(raw) == b""
    assert server.wait_event("reject", reason="rate")[0]["peer"] == f"{B}:2"
    assert server.events("reject", reason="tls") == []


def test_advertised_ipv6_clients_count_by_prefix(
    handler: list[str], serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve("--proxy-protocol", "v2", "--per-ip", "1", *handler)
    held_one, _ = held(server, "v2", "2001:db8:0:1::7")
    host, _, port = refused(server, "v2", "2001:db8:0:1::8").rpartition(":")  # same /64
    assert server.wait_event("reject", reason="per-ip")[0]["peer"] == f"[{host}]:{port}"
    other, _ = held(server, "v2", "2001:db8:0:2::7")  # another /64
    for sock in (held_one, other):
        sock.close()
