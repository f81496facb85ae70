"""The TLS relay and close_notify, on loopback pairs, with threads as the two peers.

A TLS pair is a loopback TCP connection wrapped on both ends (a socketpair's
buffers are too small to hold data in flight); the plain side is a socketpair.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from forkserve.child import relay as relay_module
from forkserve.child.relay import Relay
from forkserve.child.tls import close_notify, end_tls, finish_tls, load_context
from tests.integration.conftest import make_cert

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

WAIT = 15.0


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = make_cert(tmp_path_factory.mktemp("relaycerts"), "localhost")
    server = load_context(str(cert), str(key))  # the server's own: a bare FIN is an end
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


@pytest.fixture(params=["TLSv1_2", "TLSv1_3"])
def tls_pair(
    request: pytest.FixtureRequest, contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """(server side, client side); the client raises SSLEOFError on a bare FIN."""
    server_context, client_context = contexts
    client_context.maximum_version = getattr(ssl.TLSVersion, request.param)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw_client = socket.create_connection(listener.getsockname(), timeout=WAIT)
        raw_server, _ = listener.accept()
    raw_server.settimeout(WAIT)
    done: dict[str, ssl.SSLSocket] = {}
    handshake = threading.Thread(
        target=lambda: done.setdefault(
            "server", server_context.wrap_socket(raw_server, server_side=True)
        )
    )
    handshake.start()
    client = client_context.wrap_socket(
        raw_client, server_hostname="localhost", suppress_ragged_eofs=False
    )
    handshake.join(WAIT)
    with done["server"] as server, client:
        assert server.version() == request.param.replace("_", ".")
        yield server, client


def read_to_end(sock: socket.socket, size: int = 65536) -> bytes:
    """Read until the end: b"" (a close_notify over TLS), or CPython's
    SSLZeroReturnError for the peer's close_notify once ours was sent."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(size)
        except ssl.SSLZeroReturnError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def fin(sock: socket.socket) -> None:
    """A bare FIN: forkserve's context reads it as an end of data."""
    socket.socket.shutdown(sock, socket.SHUT_WR)


def in_thread(target: Callable[[], object]) -> Callable[[], None]:
    """Run ``target`` in a thread; the returned join re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(WAIT)
        assert not thread.is_alive(), "still running"
        if errors:
            raise errors[0]

    return join


@pytest.mark.parametrize("timeout", [None, 0.0, 5.0])
def test_close_notify_keeps_the_peers_bytes_in_flight(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket], timeout: float | None
) -> None:
    """unwrap() would throw away what the client had sent; one SSL_shutdown does not."""
    server, client = tls_pair
    before = os.urandom(200_000)
    client.sendall(before)  # in flight: unread by the server
    server.settimeout(timeout)
    fds = sorted(os.listdir("/proc/self/fd"))
    record = close_notify(server)
    assert sorted(os.listdir("/proc/self/fd")) == fds  # the stand-in is gone, the socket back
    assert server.gettimeout() == timeout
    assert record  # an alert record: type 21, or 23 under TLS 1.3's encryption
    socket.socket.sendall(server, record)
    fin(server)
    assert client.recv(10) == b""  # a clean end, not SSLEOFError
    after = os.urandom(100_000)
    client.sendall(after)
    fin(client)
    server.settimeout(WAIT)
    assert read_to_end(server) == before + after


@pytest.fixture
def plain_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the relay's end, the program's end), the program's with a timeout."""
    ours, program = socket.socketpair()
    program.settimeout(WAIT)
    with ours, program:
        yield ours, program


def test_end_tls_ends_once_and_reading_goes_on(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
) -> None:
    """A handler's end: close_notify and a FIN, once however often it is called."""
    server, client = tls_pair
    server.sendall(b"reply")
    end_tls(server)
    end_tls(server)  # daytime ends its output itself, then the handler's return does
    assert read_to_end(client) == b"reply"
    client.sendall(b"late")
    fin(client)
    assert read_to_end(server) == b"late"


def relay_in_thread(tls: ssl.SSLSocket, plain: socket.socket) -> Callable[[], None]:
    return in_thread(Relay(tls, plain).run)


@pytest.fixture
def small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads far smaller than a TLS record, and a small buffer: OpenSSL keeps most of
    each record decrypted (pending()), which no poll announces; the relay must read
    it without waiting, or the transfer stalls."""
    monkeypatch.setattr(relay_module, "CHUNK", 1000)
    monkeypatch.setattr(relay_module, "BUFFER_LIMIT", 3000)


def test_tls_sides_end_waits_for_its_bytes_to_reach_the_plain_side(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
    small_reads: None,
    plain_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Finding 18, as ``forkserve client --tls`` met it: the plain side (stdin) ends
    first; the TLS side (an echo server) answers it all, then ends; the plain side
    (stdout) takes it slowly. The relay must not stop before the last byte is out."""
    server, client = tls_pair
    ours, program = plain_pair
    relay = relay_in_thread(server, ours)
    sent = os.urandom(3_000_000)
    program.sendall(b"question")
    program.shutdown(socket.SHUT_WR)
    assert read_to_end(client) == b"question"  # then close_notify, no SSLEOFError
    got: list[bytes] = []
    reader = in_thread(lambda: got.append(read_to_end(program, 4096)))
    client.sendall(sent)
    fin(client)
    reader()
    assert len(got[0]) == len(sent)
    assert got == [sent]
    relay()


def test_plain_sides_end_first_and_the_tls_side_still_sends(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
    small_reads: None,
    plain_pair: tuple[socket.socket, socket.socket],
) -> None:
    """Finding 19: the program ends its output first, then reads; the client gets
    close_notify at once and what it sends afterwards still reaches the program."""
    server, client = tls_pair
    ours, program = plain_pair
    relay = relay_in_thread(server, ours)
    program.shutdown(socket.SHUT_WR)
    assert client.recv(10) == b""  # close_notify, before the client is done
    sent = os.urandom(3_000_000)
    got: list[bytes] = []
    reader = in_thread(lambda: got.append(read_to_end(program, 4096)))
    client.sendall(sent)
    fin(client)
    reader()
    assert got == [sent]
    relay()


def test_both_ways_at_once(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket], plain_pair: tuple[socket.socket, socket.socket]
) -> None:
    """4 MB each way, neither side reading until it has sent everything."""
    server, client = tls_pair
    ours, program = plain_pair
    relay = relay_in_thread(server, ours)
    up, down = os.urandom(4_000_000), os.urandom(4_000_000)
    got_up: list[bytes] = []

    def program_writes() -> None:
        program.sendall(down)
        program.shutdown(socket.SHUT_WR)

    def program_side() -> None:
        writer = in_thread(program_writes)
        got_up.append(read_to_end(program))
        writer()

    program_done = in_thread(program_side)
    client.sendall(up)
    fin(client)
    assert read_to_end(client) == down
    program_done()
    assert got_up == [up]
    relay()


def test_a_program_that_stops_reading_does_not_stop_its_output(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket], plain_pair: tuple[socket.socket, socket.socket]
) -> None:
    """The program closes its end after writing: its output still goes out, then
    close_notify; what the client sends after that is read and dropped, not an
    error, up to the client's end (the relay waits for it: see the next test)."""
    server, client = tls_pair
    ours, program = plain_pair
    relay = relay_in_thread(server, ours)
    program.sendall(b"answer")
    program.close()
    assert read_to_end(client) == b"answer"
    client.sendall(b"unheard")
    fin(client)
    relay()
    assert ours.fileno() >= 0  # the caller closes it


@pytest.fixture
def exited_program() -> Iterator[int]:
    """A pidfd for a program that has exited already (unreaped until the test ends)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    pidfd = os.pidfd_open(pid)
    try:
        yield pidfd
    finally:
        os.close(pidfd)
        os.waitpid(pid, 0)


def test_relay_reads_the_clients_end_before_it_returns(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
    plain_pair: tuple[socket.socket, socket.socket],
    exited_program: int,
) -> None:
    """The program is gone and its output is out, close_notify included, but the
    client has not ended yet. Returning now means the caller closes the socket with
    the client's end still to come: the kernel then answers it with a reset and
    throws away whatever of our output it had not delivered yet (10 MiB through
    ``forkserve client --tls`` came back 1.1 MB short under load). The relay must
    read, and drop, what the client still sends, up to its end."""
    server, client = tls_pair
    ours, program = plain_pair
    output = os.urandom(100_000)
    program.sendall(output)
    program.shutdown(socket.SHUT_WR)
    got: list[bytes] = []

    def client_side() -> None:
        got.append(read_to_end(client))  # every byte, then our close_notify
        client.sendall(b"after the end")  # a client still sending: dropped
        end_tls(client)  # and its own end comes only now

    client_done = in_thread(client_side)
    relay = Relay(server, ours)
    relay.run(exited_program)
    assert not relay.tls_sends, "returned before the client's end of data"
    client_done()
    assert got == [output]


def test_relay_stops_waiting_for_a_silent_client(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket],
    plain_pair: tuple[socket.socket, socket.socket],
    exited_program: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that has everything and never ends costs the child ``LINGER_IDLE``
    of silence, not forever."""
    monkeypatch.setattr(relay_module, "LINGER_IDLE", 0.2)
    server, client = tls_pair
    ours, program = plain_pair
    program.sendall(b"answer")
    program.shutdown(socket.SHUT_WR)
    relay = Relay(server, ours)
    relay.run(exited_program)
    assert relay.tls_sends  # it gave up waiting
    assert read_to_end(client) == b"answer"


def test_finish_tls_reads_the_clients_end(tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket]) -> None:
    """A handler returned: close_notify and a FIN, then what the client still sends
    is read up to its end, so closing the socket does not reset the connection (a
    reset drops what the kernel has not delivered of the handler's output)."""
    server, client = tls_pair
    server.sendall(b"reply")
    finish = in_thread(lambda: finish_tls(server))
    assert read_to_end(client) == b"reply"
    client.sendall(b"late")
    end_tls(client)
    finish()
    assert socket.socket.recv(server, 100, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""


def test_a_reset_after_the_tls_sides_clean_end_is_no_failure(
    tls_pair: tuple[ssl.SSLSocket, ssl.SSLSocket], plain_pair: tuple[socket.socket, socket.socket]
) -> None:
    """``forkserve client --tls`` reports a cut (``failure``, exit 111), but a server
    that ends cleanly and then closes, refusing what we still send, cut nothing."""
    server, client = tls_pair
    ours, program = plain_pair
    relay = Relay(client, ours)
    done = in_thread(relay.run)
    server.sendall(b"reply")
    end_tls(server)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # a reset
    assert read_to_end(program) == b"reply"
    program.sendall(b"more")
    program.shutdown(socket.SHUT_WR)
    done()
    assert relay.failure is None
