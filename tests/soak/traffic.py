"""Client-side traffic for the soak scenarios: every byte checked by SHA-256.

Payloads are a deterministic pseudo-random stream per connection (slices of one random
pool), so a connection of 8 MiB needs no 8 MiB buffer and the receiver can hash what
it expects without keeping what was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import random
import socket
import struct
from dataclasses import dataclass, field

POOL = random.Random(20261124).randbytes(1 << 20)
CHUNK = 64 * 1024
# Each client socket's kernel buffers, fixed (so not autotuned up to several MiB):
# 1,000 connections streaming megabytes at once otherwise exceed the machine's TCP
# memory (net.ipv4.tcp_mem: 2.2 GiB here), and the kernel resets connections ("TCP:
# out of memory -- consider tuning tcp_mem" in dmesg, seen in the first full soak).
CLIENT_BUFFER = 256 * 1024
# And at most this much sent but not yet echoed back per connection: the client hashes
# slower than it sends, and without a window the excess waits in the server's receive
# buffers, with the same result.
WINDOW = 512 * 1024


def stream(seed: int, size: int) -> list[memoryview]:
    """The chunks of connection ``seed``'s payload of ``size`` bytes."""
    view = memoryview(POOL)
    start = (seed * 7919) % len(POOL)
    chunks = []
    while size:
        take = min(size, CHUNK, len(POOL) - start)
        chunks.append(view[start : start + take])
        size -= take
        start = (start + take) % len(POOL)
    return chunks


@dataclass
class Tally:
    """What a batch of connections did."""

    connections: int = 0
    ok: int = 0
    sent: int = 0
    verified: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.connections += other.connections
        self.ok += other.ok
        self.sent += other.sent
        self.verified += other.verified
        self.failures.extend(other.failures[:20])


async def echo_one(
    port: int, seed: int, size: int, *, half_close: bool, command: bytes, timeout: float
) -> Tally:
    """One connection: send ``command`` then ``size`` bytes while reading the echo.

    With ``half_close`` the client shuts its write side and expects EOF after the last
    byte; otherwise it reads exactly ``size`` bytes and closes.
    """
    tally = Tally(connections=1)
    expected = hashlib.sha256()
    for chunk in stream(seed, size):
        expected.update(chunk)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError) as exc:
        tally.failures.append(f"c{seed}: connect: {exc!r}")
        return tally

    got = hashlib.sha256()
    received = 0
    progress = asyncio.Event()

    async def send() -> None:
        writer.write(command)
        for chunk in stream(seed, size):
            while tally.sent - received > WINDOW:
                progress.clear()
                await progress.wait()
            writer.write(chunk)
            tally.sent += len(chunk)
            await writer.drain()
        if half_close:
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(timeout):
            while received < size:
                data = await reader.read(min(CHUNK * 4, size - received))
                if not data:
                    break
                got.update(data)
                received += len(data)
                progress.set()
            await sender
            if half_close and received == size and await reader.read(1):
                tally.failures.append(f"c{seed}: extra bytes after {size}")
                return tally
    except (OSError, TimeoutError) as exc:
        tally.failures.append(f"c{seed}: {exc!r} after {received} of {size} bytes")
        return tally
    finally:
        sender.cancel()
        writer.close()
    if received != size:
        tally.failures.append(f"c{seed}: short echo, {received} of {size} bytes")
    elif got.digest() != expected.digest():
        tally.failures.append(f"c{seed}: SHA-256 mismatch over {size} bytes")
    else:
        tally.ok = 1
        tally.verified = size
    return tally


async def integrity(
    port: int,
    *,
    connections: int,
    max_size: int,
    concurrency: int,
    seed: int,
    timeout: float,
    command: bytes = b"",
) -> Tally:
    """``connections`` echoes of random sizes up to ``max_size``, random half-closes.

    ``command`` goes first on each connection (the chaos handler's ``E``).
    """
    rng = random.Random(seed)
    plans = [(rng.randrange(max_size + 1), rng.random() < 0.5) for _ in range(connections)]
    gate = asyncio.Semaphore(concurrency)

    async def limited(index: int, size: int, half: bool) -> Tally:
        async with gate:
            return await echo_one(
                port,
                seed * 100_003 + index,
                size,
                half_close=half,
                command=command,
                timeout=timeout,
            )

    tally = Tally()
    for result in await asyncio.gather(*(limited(i, s, h) for i, (s, h) in enumerate(plans))):
        tally.add(result)
    return tally


def run_integrity(port: int, **options: object) -> Tally:
    """``integrity`` from synchronous code: a fresh event loop per call."""
    return asyncio.run(integrity(port, **options))  # type: ignore[arg-type]


def reset_connection(port: int) -> None:
    """A client that sends a little and resets (SO_LINGER 0)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"E" + b"r" * 1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _churn_worker(port: int, count: int, results: multiprocessing.Queue[Tally]) -> None:
    tally = Tally()
    for i in range(count):
        tally.connections += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"%06d" % i)
                sock.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := sock.recv(64):
                    data += chunk
        except OSError as exc:
            tally.failures.append(repr(exc))
            continue
        tally.sent += 6
        if data == b"%06d" % i:
            tally.ok += 1
            tally.verified += 6
        else:
            tally.failures.append(f"churn: got {data!r}")
    results.put(tally)


def churn(port: int, connections: int, workers: int = 8) -> Tally:
    """``connections`` short connections (connect, 6 bytes, half-close, EOF) from
    ``workers`` processes."""
    results: multiprocessing.Queue[Tally] = multiprocessing.Queue()
    share = [connections // workers + (i < connections % workers) for i in range(workers)]
    procs = [multiprocessing.Process(target=_churn_worker, args=(port, n, results)) for n in share]
    for proc in procs:
        proc.start()
    tally = Tally()
    for _ in procs:
        tally.add(results.get(timeout=3600))
    for proc in procs:
        proc.join(60)
    return tally
