"""Async workers: one shared listening socket against SO_REUSEPORT per worker.

Two event-loop echo workers (uvloop when installed, as forkserve's async workers),
either both watching one shared listening socket (as forkserve's do) or each
accepting from a socket of its own bound with SO_REUSEPORT. Four rate clients
(connect, 16-byte echo, close) run for 4 s: with both loops free, then with one
worker's loop blocked (a connection whose handler calls time.sleep(3): what a
blocking handler does). Counts echoes that took over a second ("stalled").

Usage: ``python benchmarks/async_reuseport.py`` (about 20 s; loopback only).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable

from reuseport import client  # the same rate client as the prefork comparison

WORKERS = 2
CLIENTS = 4
SECONDS = 4.0


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(65536)
    if data == b"B":  # block this loop, as a handler that does not await would
        time.sleep(3)
    while data:
        writer.write(data)
        await writer.drain()
        data = await reader.read(65536)
    writer.close()


def serve(listener: socket.socket) -> None:
    loop = new_loop()
    listener.setblocking(False)

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=listener, backlog=1024)
        await server.serve_forever()

    loop.run_until_complete(main())


def reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def fork(run: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            run()
        finally:
            os._exit(0)
    return pid


def start(kind: str) -> tuple[int, list[int]]:
    if kind == "shared":
        listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        port = listener.getsockname()[1]
        pids = [fork(lambda: serve(listener)) for _ in range(WORKERS)]
        listener.close()
    else:
        probe = socket.socket()  # bound, not listening: it only reserves the port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        pids = [fork(lambda: serve(reuseport_socket(port))) for _ in range(WORKERS)]
        time.sleep(0.3)  # let every worker bind before the probe goes (a measurement tool)
        probe.close()
    time.sleep(0.3)
    return port, pids


def run(kind: str, blocked: bool) -> None:
    port, pids = start(kind)
    blocker = None
    if blocked:  # keep connecting until a worker took one and blocks on it
        blocker = socket.create_connection(("127.0.0.1", port), timeout=5)
        blocker.sendall(b"B")
    results: mp.Queue[tuple[list[float], int]] = mp.Queue()
    clients = [mp.Process(target=client, args=(port, results)) for _ in range(CLIENTS)]
    for proc in clients:
        proc.start()
    gathered = [results.get() for _ in clients]
    for proc in clients:
        proc.join()
    if blocker is not None:
        blocker.close()
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    latencies = sorted(latency for found, _ in gathered for latency in found)
    stalls = sum(g[1] for g in gathered)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6

    print(
        f"{kind:10s} blocked={int(blocked)} conns/s={len(latencies) / SECONDS:7.0f} "
        f"p50={pct(0.5):6.0f}us p99={pct(0.99):8.0f}us stalled>1s={stalls}",
        flush=True,
    )


if __name__ == "__main__":
    for blocked in (False, True):
        for kind in ("shared", "reuseport"):
            run(kind, blocked)
