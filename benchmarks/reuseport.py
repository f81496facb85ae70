"""One shared accept queue against SO_REUSEPORT per worker, for a prefork pool.

The same four echo workers, serving one connection at a time, once sharing one
listening socket (each waits in its own epoll with EPOLLEXCLUSIVE, as forkserve's
prefork workers do) and once each with a socket of its own bound with SO_REUSEPORT.
Four rate clients (connect, 16-byte echo, close) run for 4 s, first with every worker
free, then with two workers pinned by long-lived connections, as a real pool has.
Counts echoes that took over a second ("stalled").

Usage: ``python benchmarks/reuseport.py`` (about 20 s; loopback only).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import select
import socket
import time
from collections.abc import Callable

WORKERS = 4
CLIENTS = 4
SECONDS = 4.0


def echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.close()


def worker_shared(listener: socket.socket) -> None:
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
    listener.setblocking(False)
    while True:
        poller.poll()
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        conn.setblocking(True)
        echo(conn)


def worker_reuseport(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    while True:
        conn, _ = sock.accept()
        echo(conn)


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
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        port = listener.getsockname()[1]
        pids = [fork(lambda: worker_shared(listener)) for _ in range(WORKERS)]
        listener.close()
    else:
        probe = socket.socket()
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        pids = [fork(lambda: worker_reuseport(port)) for _ in range(WORKERS)]
        time.sleep(0.3)  # let every worker bind before the probe goes (a measurement tool)
        probe.close()
    time.sleep(0.3)
    return port, pids


def client(port: int, results: mp.Queue[tuple[list[float], int]]) -> None:
    latencies: list[float] = []
    stalls = 0
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"x" * 16)
            got = b""
            try:
                while len(got) < 16:
                    got += sock.recv(16)
                latencies.append(time.monotonic() - began)
            except TimeoutError:
                stalls += 1
    results.put((latencies, stalls))


def run(kind: str, pinned: int) -> None:
    port, pids = start(kind)
    holders = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(pinned)]
    for holder in holders:  # each now occupies a worker
        holder.sendall(b"p")
        holder.recv(1)
    results: mp.Queue[tuple[list[float], int]] = mp.Queue()
    clients = [mp.Process(target=client, args=(port, results)) for _ in range(CLIENTS)]
    for proc in clients:
        proc.start()
    gathered = [results.get() for _ in clients]
    for proc in clients:
        proc.join()
    for holder in holders:
        holder.close()
    for pid in pids:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    latencies = sorted(latency for found, _ in gathered for latency in found)
    stalls = sum(g[1] for g in gathered)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6

    print(
        f"{kind:10s} pinned={pinned} conns/s={len(latencies) / SECONDS:7.0f} "
        f"p50={pct(0.5):6.0f}us p99={pct(0.99):8.0f}us stalled>1s={stalls}"
    )


if __name__ == "__main__":
    for pinned in (0, 2):
        for kind in ("shared", "reuseport"):
            run(kind, pinned)
