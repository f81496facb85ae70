"""Which client model can drive an echo server hardest on this machine?

The measurement behind ``forkserve bench``'s design: the same pingpong and rate loops
written three ways, without verification (so that only the model differs):

- blocking: one process per connection or worker, blocking sockets;
- asyncio: PROCS processes, each running CONNS / PROCS coroutines on asyncio's loop;
- uvloop: the same on uvloop.

``benchmarks/run.py`` runs ``compare`` against a server and puts the table in
docs/benchmarks.md. Usage alone: ``python benchmarks/client_models.py PORT``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

HOST = "127.0.0.1"
# (label, event loop or None for blocking, processes or None for one per connection)
MODELS: list[tuple[str, str | None, int | None]] = [
    ("blocking, 1 process per connection", None, None),
    ("asyncio, 2 processes", "asyncio", 2),
    ("uvloop, 1 process", "uvloop", 1),
    ("uvloop, 2 processes", "uvloop", 2),
    ("uvloop, 4 processes", "uvloop", 4),
]


def blocking_pingpong(port: int, deadline: float, size: int) -> int:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message, buf, done = b"x" * size, bytearray(size), 0
        while time.monotonic() < deadline:
            sock.sendall(message)
            got = 0
            while got < size:
                got += sock.recv_into(buf, size - got)
            done += 1
    return done


def blocking_rate(port: int, deadline: float, size: int) -> int:
    message, buf, done = b"x" * size, bytearray(size), 0
    while time.monotonic() < deadline:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(message)
            got = 0
            while got < size:
                got += sock.recv_into(buf, size - got)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv_into(buf):
                pass
        done += 1
    return done


async def async_pingpong(port: int, deadline: float, size: int) -> int:
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        message, buf, done = b"x" * size, bytearray(size), 0
        while time.monotonic() < deadline:
            await loop.sock_sendall(sock, message)
            got = 0
            while got < size:
                got += await loop.sock_recv_into(sock, memoryview(buf)[got:])
            done += 1
    return done


async def async_rate(port: int, deadline: float, size: int) -> int:
    loop = asyncio.get_running_loop()
    message, buf, done = b"x" * size, bytearray(size), 0
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, (HOST, port))
            await loop.sock_sendall(sock, message)
            got = 0
            while got < size:
                got += await loop.sock_recv_into(sock, memoryview(buf)[got:])
            sock.shutdown(socket.SHUT_WR)
            while await loop.sock_recv_into(sock, buf):
                pass
        done += 1
    return done


BLOCKING: dict[str, Callable[[int, float, int], int]] = {
    "pingpong": blocking_pingpong,
    "rate": blocking_rate,
}
ASYNC: dict[str, Callable[[int, float, int], Coroutine[Any, Any, int]]] = {
    "pingpong": async_pingpong,
    "rate": async_rate,
}


def _blocking_child(workload: str, port: int, seconds: float, size: int, out: Any) -> None:
    out.send(BLOCKING[workload](port, time.monotonic() + seconds, size))


def _async_child(spec: tuple[str, str, int, float, int, int], out: Any) -> None:
    workload, loop_name, port, seconds, size, count = spec

    async def main() -> int:
        deadline = time.monotonic() + seconds
        coroutines = [ASYNC[workload](port, deadline, size) for _ in range(count)]
        return sum(await asyncio.gather(*coroutines))

    if loop_name == "uvloop":
        import uvloop

        out.send(uvloop.run(main()))
    else:
        out.send(asyncio.run(main()))


def measure(
    port: int, workload: str, model: tuple[str, str | None, int | None], seconds: float
) -> float:
    """Operations per second of one model: 8 connections (pingpong) or workers (rate)."""
    conns, size = 8, 64 if workload == "pingpong" else 16
    _, loop_name, procs = model
    ctx = multiprocessing.get_context("fork")
    pipes, children = [], []
    for _ in range(conns if procs is None else procs):
        reader, writer = ctx.Pipe(duplex=False)
        if loop_name is None:
            args: tuple[Any, ...] = (workload, port, seconds, size, writer)
            child = ctx.Process(target=_blocking_child, args=args)
        else:
            assert procs is not None
            args = ((workload, loop_name, port, seconds, size, conns // procs), writer)
            child = ctx.Process(target=_async_child, args=args)
        child.start()
        writer.close()
        pipes.append(reader)
        children.append(child)
    total = 0
    for reader in pipes:
        if reader.poll(seconds + 30):
            total += reader.recv()
    for child in children:
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
    return total / seconds


def compare(
    port: int, seconds: float = 2.0, workloads: tuple[str, ...] = ("pingpong", "rate")
) -> dict[str, dict[str, float]]:
    """``{workload: {model label: operations per second}}``."""
    return {
        workload: {model[0]: measure(port, workload, model, seconds) for model in MODELS}
        for workload in workloads
    }


if __name__ == "__main__":
    for workload, results in compare(int(sys.argv[1])).items():
        for label, rate in results.items():
            print(f"{workload:8} {label:36} {rate:10,.0f}/s")
