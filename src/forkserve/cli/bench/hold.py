"""``forkserve bench --mode hold``: thousands of idle connections on one asyncio loop.

Holding needs file descriptors, not speed, so one process and the standard library's
event loop do. Every connection verifies one echo when opened and one after the hold,
then half-closes and expects EOF, like the other workloads.

Resource handling: every socket is closed on every path by the coroutine that owns it
(``_hold_open`` until it is handed over, then ``_hold_close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

from forkserve._errors import UsageError
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

# Descriptors hold needs beyond one per connection (stdio, the event loop, imports).
FD_SPARE = 64
# A shard's descriptors beside its connections: the standard ones, asyncio's.
SHARD_FD_SPARE = 32


def hold(config: Config, counters: Counters, on_held: Callable[[Tally], None]) -> Tally:
    """Open ``config.conns`` connections at once, verify an echo on each, hold them
    ``config.duration`` seconds, verify an echo on each again, then half-close and
    expect EOF. ``on_held`` runs while they are held (the memory measurement).

    More connections than one process's hard RLIMIT_NOFILE allows (and it cannot be
    raised) are held by several forked processes (see ``hold_sharded``).

    Raises:
        UsageError: not enough descriptors, and the hard limit cannot be raised.
    """
    needed = config.conns + FD_SPARE
    shards = hold_shards(needed)
    if shards > 1:
        return hold_sharded(config, on_held, shards)
    raise_fd_limit(needed)
    return asyncio.run(_hold(config, counters, on_held))


def hold_sharded(config: Config, on_held: Callable[[Tally], None], shards: int) -> Tally:
    """``hold`` split over ``shards`` forked processes: each opens its share and
    reports on a pipe; once all have, ``on_held`` runs and they are told to go on;
    each then sends its tally back (pickled) and exits.

    Resource handling: every pipe is closed on every path; the children are reaped.
    """
    import os
    import pickle
    from dataclasses import replace

    shares = [config.conns // shards + (i < config.conns % shards) for i in range(shards)]
    go_r, go_w = os.pipe()
    children: list[tuple[int, int]] = []
    try:
        for share in shares:
            report_r, report_w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the shard: never returns
                os.close(report_r)
                os.close(go_w)
                _shard(replace(config, conns=share), report_w, go_r)
            os.close(report_w)
            children.append((pid, report_r))
        with contextlib.ExitStack() as stack:
            readers = [stack.enter_context(os.fdopen(fd, "rb")) for _, fd in children]
            opened = Tally()
            for reader in readers:
                opened.merge(pickle.load(reader))  # noqa: S301 - our own children's
            on_held(opened)
            os.close(go_w)
            go_w = -1
            total = Tally()
            for reader in readers:
                total.merge(pickle.load(reader))  # noqa: S301 - our own children's
    finally:
        os.close(go_r)
        if go_w >= 0:
            os.close(go_w)
        for pid, _ in children:
            os.waitpid(pid, 0)
    return total


def _shard(config: Config, report_w: int, go_r: int) -> None:
    """One shard's life (see hold_sharded): ends in os._exit."""
    import os
    import pickle

    status = 1
    try:
        raise_fd_limit(config.conns + SHARD_FD_SPARE)
        with os.fdopen(report_w, "wb") as out:

            def held(tally: Tally) -> None:
                pickle.dump(tally, out)
                out.flush()
                os.read(go_r, 1)  # end of file: every shard is open, go on

            tally = asyncio.run(_hold(config, Counters([0, 0, 0], 0), held))
            pickle.dump(tally, out)
        status = 0
    finally:
        os._exit(status)


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


def hold_shards(needed: int) -> int:
    """How many processes hold needs: one, unless ``needed`` descriptors are more
    than the hard RLIMIT_NOFILE allows one process (and it cannot be raised: no
    CAP_SYS_RESOURCE); then enough processes that each stays under it."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or needed <= hard:
        return 1
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
    except (ValueError, PermissionError):
        return -(-needed // (hard - FD_SPARE))
    return 1


def raise_fd_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to ``needed`` if it is lower, and the hard limit
    too when it is lower and the process may (CAP_SYS_RESOURCE, e.g. root: up to
    fs.nr_open), as ``ulimit -Hn`` would.

    Raises:
        UsageError: the hard limit is lower than ``needed`` and cannot be raised.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
        except (ValueError, PermissionError):
            raise UsageError(
                f"hold needs {needed} file descriptors but the hard limit is {hard} "
                "(ulimit -Hn): use a smaller -c or raise the limit"
            ) from None
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
