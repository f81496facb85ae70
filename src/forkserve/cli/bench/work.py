"""The client side of ``forkserve bench``: the loops that talk to the server.

rate, pingpong and bulk run one blocking-socket loop per connection or worker, each in
a process of its own (``cli.bench.run`` forks them). On the reference machine that beat
asyncio and uvloop clients for both pingpong and rate (docs/benchmarks.md, "client
models"): a blocking round trip is two system calls and no event loop. bulk adds a
sender thread so that it reads the echo while it writes (a client that writes
everything first deadlocks once both socket buffers fill). hold runs in one process on
asyncio: thousands of idle connections need no speed, only file descriptors.

Resource handling: every socket is closed by the function that opened it, on every
path. Error handling: nothing is retried; every failure becomes one ``Problem`` in the
``Tally`` and the loop goes on with the next connection (rate, hold) or ends (the
persistent connection of a pingpong or bulk worker).
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forkserve._errors import TemporaryError
from forkserve.cli.bench.stats import Tally
from forkserve.cli.bench.verify import (
    SELF_CONNECT,
    TIMEOUT,
    Problem,
    Stream,
    VerifyError,
    extra_bytes,
    mismatch,
    no_eof,
    short,
)
from forkserve.core.errnames import errno_name

RECV_BUFFER = 256 * 1024
# How often a loop publishes its counts for the progress bar.
PUBLISH_EVERY = 0.1


@dataclass(frozen=True)
class Config:
    """One run: where, which workload, how much. Validated by ``cli.bench.run``."""

    mode: str
    host: str
    port: int
    family: int
    sockaddr: Any  # (host, port, ...) or a Unix socket's path (b"\0NAME": abstract)
    conns: int
    duration: float
    size: int
    nbytes: int
    timeout: float
    proxy: str = ""  # "v1" or "v2": send a PROXY header naming our own addresses
    tls: Any = None  # an ssl.SSLContext: speak TLS (rate and pingpong)

    @property
    def target(self) -> str:
        if self.family == socket.AF_UNIX:
            return self.host  # unix:PATH
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Counters:
    """Live counts one loop shares with the parent for the progress bar.

    Args:
        shared: three integers per worker (operations, verified bytes, problems),
            in shared memory when the worker is another process.
        index: which worker.
    """

    def __init__(self, shared: Any, index: int) -> None:
        self.shared = shared
        self.base = 3 * index

    def publish(self, tally: Tally) -> None:
        """Copy the tally's counts where the parent reads them."""
        self.shared[self.base] = tally.ops
        self.shared[self.base + 1] = tally.verified_bytes
        self.shared[self.base + 2] = tally.error_count


def os_problem(exc: OSError, conn: str, offset: int | None) -> Problem:
    """A failed system call as a problem named by its errno (``ECONNREFUSED``)."""
    name = errno_name(exc.errno, type(exc).__name__)
    return Problem(name, conn, offset, exc.strerror or str(exc))


def connect(config: Config, conn: str) -> socket.socket:
    """A blocking socket connected to the server, with ``config.timeout`` on every call.

    Raises:
        VerifyError: refused, timed out, or connected to itself (on an ephemeral
            port nothing listens on, a connect can pick the same port as source
            and succeed by simultaneous open: no server is involved).
    """
    sock = socket.socket(config.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(config.timeout)
        sock.connect(config.sockaddr)
        check_not_self(sock, conn)
        if config.proxy or config.tls is not None:
            from forkserve.cli.client import start_edge

            sock = start_edge(sock, config.proxy, config.tls, config.host)
    except TimeoutError:
        sock.close()
        raise VerifyError(
            Problem(TIMEOUT, conn, None, f"connect timed out after {config.timeout:g}s")
        ) from None
    except OSError as exc:
        sock.close()
        raise VerifyError(os_problem(exc, conn, None)) from None
    except VerifyError:
        sock.close()
        raise
    except TemporaryError as exc:  # the TLS handshake failed
        sock.close()
        raise VerifyError(Problem("TLS", conn, None, str(exc))) from None
    return sock


def check_not_self(sock: socket.socket, conn: str) -> None:
    local = sock.getsockname()
    if local == sock.getpeername():
        raise VerifyError(Problem(SELF_CONNECT, conn, None, f"{local} is both ends"))


def send(sock: socket.socket, data: bytes | memoryview, conn: str, offset: int) -> None:
    try:
        sock.sendall(data)
    except TimeoutError:
        raise VerifyError(short(conn, offset, offset + len(data), "send timed out")) from None
    except OSError as exc:
        raise VerifyError(os_problem(exc, conn, offset)) from None


@dataclass
class Echo:
    """One connection's echo checker: what came back must be ``stream``; reads into
    ``buf``; every read waits at most ``timeout`` (set on ``sock``)."""

    sock: socket.socket
    stream: Stream
    conn: str
    buf: bytearray
    timeout: float

    def expect(
        self, start: int, length: int, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Read exactly ``length`` echoed bytes and check them against the stream.

        ``start`` is both the stream offset and the connection offset: every
        connection sends its stream from offset 0.

        Raises:
            VerifyError: mismatch, EOF or timeout before ``length`` bytes, or an error.
        """
        view = memoryview(self.buf)
        got = 0
        while got < length:
            try:
                n = self.sock.recv_into(view, min(len(view), length - got))
            except TimeoutError:
                why = f"timed out after {self.timeout:g}s"
                raise VerifyError(short(self.conn, start + got, start + length, why)) from None
            except OSError as exc:
                raise VerifyError(os_problem(exc, self.conn, start + got)) from None
            if n == 0:
                raise VerifyError(short(self.conn, start + got, start + length, "EOF"))
            bad = self.stream.first_mismatch(start + got, view[:n])
            if bad is not None:
                at = start + got + bad
                raise VerifyError(mismatch(self.conn, at, self.stream.byte_at(at), view[bad]))
            got += n
            if on_bytes is not None:
                on_bytes(n)

    def expect_eof(self, offset: int) -> None:
        """After our half-close: the server must close with nothing more to say."""
        try:
            n = self.sock.recv_into(self.buf)
        except TimeoutError:
            raise VerifyError(no_eof(self.conn, offset, self.timeout)) from None
        except OSError as exc:
            ssl = sys.modules.get("ssl")
            # Over TLS, after our own close_notify, CPython raises SSLZeroReturnError
            # on the server's instead of returning 0: that is the EOF expected.
            if ssl is None or not isinstance(exc, ssl.SSLZeroReturnError):
                raise VerifyError(os_problem(exc, self.conn, offset)) from None
            n = 0
        if n:
            raise VerifyError(extra_bytes(self.conn, offset, bytes(self.buf[:n])))

    def half_close(self, offset: int) -> None:
        """Our end of data: a FIN, after a close_notify over TLS (SSLSocket.shutdown()
        would drop the SSL object and read the server's close_notify as raw bytes)."""
        from forkserve.child.builtins import is_tls

        try:
            if is_tls(self.sock):
                from forkserve.child.tls import end_tls

                end_tls(self.sock)
            else:
                self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise VerifyError(os_problem(exc, self.conn, offset)) from None


Start = Callable[[], float]  # waits for the common start; returns the deadline


def rate(config: Config, index: int, start: Start, counters: Counters) -> Tally:
    """Loop until the deadline: connect, send, read the whole echo, half-close, EOF."""
    tally = Tally()
    stream = Stream(index)
    size = config.size
    buf = bytearray(min(size, RECV_BUFFER))
    deadline = start()
    published = 0.0
    i = 0
    while (now := time.monotonic()) < deadline:
        if now - published >= PUBLISH_EVERY:
            counters.publish(tally)
            published = now
        conn = f"w{index}.c{i}"
        message = stream.read(i * size, size)
        began = time.perf_counter_ns()
        try:
            with connect(config, conn) as sock:
                # Each connection reports offsets from 0 but sends a fresh part of
                # the stream; a Stream view shifted by i * size does both.
                echo = Echo(sock, Shifted(stream, i * size), conn, buf, config.timeout)
                send(sock, message, conn, 0)
                echo.expect(0, size)
                took = time.perf_counter_ns() - began
                echo.half_close(size)
                echo.expect_eof(size)
        except VerifyError as exc:
            tally.add_problem(exc.problem)
        else:
            tally.ops += 1
            tally.verified_bytes += size
            tally.latencies.append(took)
        i += 1
    counters.publish(tally)
    return tally


class Shifted(Stream):
    """``stream`` seen from ``shift`` on: offset 0 here is ``shift`` there."""

    def __init__(self, stream: Stream, shift: int) -> None:
        super().__init__(stream.seed)
        self.shift = shift

    def first_mismatch(self, offset: int, data: bytes | bytearray | memoryview) -> int | None:
        return super().first_mismatch(offset + self.shift, data)

    def byte_at(self, offset: int) -> int:
        return super().byte_at(offset + self.shift)


def open_worker(
    config: Config, index: int, start: Start
) -> tuple[Tally, str, socket.socket | None]:
    """A persistent-connection worker's tally, name and socket.

    If the connection fails, the problem is counted, the start barrier is passed (the
    other workers must not wait for this one) and the socket is None.
    """
    tally = Tally()
    conn = f"w{index}"
    try:
        return tally, conn, connect(config, conn)
    except VerifyError as exc:
        tally.add_problem(exc.problem)
        start()
        return tally, conn, None


def pingpong(config: Config, index: int, start: Start, counters: Counters) -> Tally:
    """One persistent connection: send a message, read its whole echo, repeat."""
    tally, conn, sock = open_worker(config, index, start)
    if sock is None:
        return tally
    with sock:
        if config.family != socket.AF_UNIX:  # a Unix socket has no Nagle to turn off
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = Stream(index)
        size = config.size
        echo = Echo(sock, stream, conn, bytearray(min(size, RECV_BUFFER)), config.timeout)
        latencies = tally.latencies
        deadline = start()
        offset = 0
        try:
            while time.monotonic() < deadline:
                message = stream.read(offset, size)
                began = time.perf_counter_ns()
                send(sock, message, conn, offset)
                echo.expect(offset, size)
                latencies.append(time.perf_counter_ns() - began)
                offset += size
                tally.ops += 1
                tally.verified_bytes += size
                if tally.ops % 512 == 0:
                    counters.publish(tally)
            echo.half_close(offset)
            echo.expect_eof(offset)
        except VerifyError as exc:
            tally.add_problem(exc.problem)
    counters.publish(tally)
    return tally


def send_stream(
    sock: socket.socket, stream: Stream, total: int, conn: str, problems: list[Problem]
) -> None:
    """bulk's sender thread: write the stream's ``total`` bytes, then half-close;
    a failure goes into ``problems``."""
    offset = 0
    try:
        for piece in stream.pieces(0, total):
            send(sock, piece, conn, offset)
            offset += len(piece)
        sock.shutdown(socket.SHUT_WR)
    except VerifyError as exc:
        problems.append(exc.problem)
    except OSError as exc:
        problems.append(os_problem(exc, conn, offset))


def bulk(config: Config, index: int, start: Start, counters: Counters) -> Tally:
    """Stream ``config.nbytes`` both ways on one connection, checking every byte.

    A sender thread writes the stream and then half-closes; this thread reads and
    checks the echo as it arrives, then expects EOF.
    """
    tally, conn, sock = open_worker(config, index, start)
    if sock is None:
        return tally
    stream = Stream(index)
    total = config.nbytes
    sender_problems: list[Problem] = []
    send_args = (sock, stream, total, conn, sender_problems)

    def on_bytes(n: int) -> None:
        tally.verified_bytes += n
        now = time.monotonic()
        if now - published[0] >= PUBLISH_EVERY:
            counters.publish(tally)
            published[0] = now

    published = [0.0]
    with sock:
        start()
        thread = threading.Thread(
            target=send_stream, args=send_args, name=f"bulk-sender-{index}", daemon=True
        )
        thread.start()
        echo = Echo(sock, stream, conn, bytearray(RECV_BUFFER), config.timeout)
        try:
            echo.expect(0, total, on_bytes)
            echo.expect_eof(total)
        except VerifyError as exc:
            tally.add_problem(exc.problem)
            _unblock(sock)
        else:
            tally.ops += 1
        thread.join(config.timeout + 1.0)
        if sender_problems and not tally.error_count:
            tally.add_problem(sender_problems[0])
    counters.publish(tally)
    return tally


def _unblock(sock: socket.socket) -> None:
    """Wake a thread blocked sending on ``sock``: we gave up on this connection."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
