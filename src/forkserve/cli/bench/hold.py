"""``forkserve bench --mode hold``: thousands of idle connections on one asyncio loop.

Holding needs file descriptors, not speed, so one process and the standard library's
event loop do. Every connection verifies one echo when opened and one after the hold,
then half-closes and expects EOF, like the other workloads.

Resource handling: every socket is closed on every path by the coroutine that owns it
(``_hold_open`` until it is handed over, then ``_hold_close``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from forkserve.cli.bench.stats import Tally
from forkserve.cli.bench.verify import (
    TIMEOUT,
    Problem,
    Stream,
    VerifyError,
    extra_bytes,
    mismatch,
    no_eof,
    short,
)
from forkserve.cli.bench.work import Config, Counters, check_not_self, os_problem


def hold(config: Config, counters: Counters, on_held: Callable[[Tally], None]) -> Tally:
    """Open ``config.conns`` connections at once, verify an echo on each, hold them
    ``config.duration`` seconds, verify an echo on each again, then half-close and
    expect EOF. ``on_held`` runs while they are held (the memory measurement)."""
    return asyncio.run(_hold(config, counters, on_held))


async def _hold(config: Config, counters: Counters, on_held: Callable[[Tally], None]) -> Tally:
    tally = Tally()
    opened = await asyncio.gather(
        *(_hold_open(config, i, tally, counters) for i in range(config.conns))
    )
    on_held(tally)
    await asyncio.sleep(config.duration)  # the workload itself: hold them idle
    await asyncio.gather(
        *(_hold_close(config, i, sock, tally, counters) for i, sock in enumerate(opened) if sock)
    )
    counters.publish(tally)
    return tally


async def _hold_open(
    config: Config, i: int, tally: Tally, counters: Counters
) -> socket.socket | None:
    loop = asyncio.get_running_loop()
    conn = f"c{i}"
    sock = socket.socket(config.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            await asyncio.wait_for(loop.sock_connect(sock, config.sockaddr), config.timeout)
        except TimeoutError:
            detail = f"connect timed out after {config.timeout:g}s"
            raise VerifyError(Problem(TIMEOUT, conn, None, detail)) from None
        except OSError as exc:
            raise VerifyError(os_problem(exc, conn, None)) from None
        check_not_self(sock, conn)
        tally.established += 1
        await _async_echo(config, sock, Stream(i), conn, 0)
    except VerifyError as exc:
        sock.close()
        tally.add_problem(exc.problem)
        counters.publish(tally)
        return None
    tally.verified_start += 1
    counters.publish(tally)
    return sock


async def _hold_close(
    config: Config, i: int, sock: socket.socket, tally: Tally, counters: Counters
) -> None:
    conn = f"c{i}"
    size = config.size
    with sock:
        try:
            await _async_echo(config, sock, Stream(i), conn, size)
            await _async_eof(config, sock, conn, 2 * size)
        except VerifyError as exc:
            tally.add_problem(exc.problem)
        else:
            tally.ops += 1
            tally.verified_bytes += 2 * size
    counters.publish(tally)


async def _async_echo(
    config: Config, sock: socket.socket, stream: Stream, conn: str, offset: int
) -> None:
    """Send stream bytes ``[offset, offset + size)`` and check their whole echo."""
    loop = asyncio.get_running_loop()
    size = config.size
    try:
        await asyncio.wait_for(loop.sock_sendall(sock, stream.read(offset, size)), config.timeout)
    except TimeoutError:
        raise VerifyError(short(conn, offset, offset + size, "send timed out")) from None
    except OSError as exc:
        raise VerifyError(os_problem(exc, conn, offset)) from None
    got = bytearray()
    while len(got) < size:
        at = offset + len(got)
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, size - len(got)), config.timeout)
        except TimeoutError:
            why = f"timed out after {config.timeout:g}s"
            raise VerifyError(short(conn, at, offset + size, why)) from None
        except OSError as exc:
            raise VerifyError(os_problem(exc, conn, at)) from None
        if not data:
            raise VerifyError(short(conn, at, offset + size, "EOF"))
        bad = stream.first_mismatch(at, data)
        if bad is not None:
            raise VerifyError(mismatch(conn, at + bad, stream.byte_at(at + bad), data[bad]))
        got += data


async def _async_eof(config: Config, sock: socket.socket, conn: str, offset: int) -> None:
    """Half-close; the server must then close with nothing more to say."""
    loop = asyncio.get_running_loop()
    try:
        sock.shutdown(socket.SHUT_WR)
        data = await asyncio.wait_for(loop.sock_recv(sock, 64), config.timeout)
    except TimeoutError:
        raise VerifyError(no_eof(conn, offset, config.timeout)) from None
    except OSError as exc:
        raise VerifyError(os_problem(exc, conn, offset)) from None
    if data:
        raise VerifyError(extra_bytes(conn, offset, data))
