"""The test stream ``forkserve bench`` sends and checks every echoed byte against (pure).

No I/O: bytes and offsets in, decisions and descriptions out. The workers in
``cli.bench.work`` own the sockets.

The stream has to be cheap to produce and to check at the speed of loopback (about
2 GB/s on the reference machine, see docs/benchmarks.md) from Python, yet any lost,
duplicated, reordered or altered byte must show. Generating fresh random bytes for
every block on both sides costs more CPU than the kernel's copies, so the stream is a
sequence of 64 KiB windows into one 1 MiB pool of random bytes, each window starting
at an offset derived from ``(seed, block number)`` by a 64-bit mixer (splitmix64).
Sending is then zero-copy slicing, and checking is ``bytes.startswith`` (memcmp).
A loss or duplication of L bytes shifts the data against windows that start at
unrelated random offsets, so it shows at the first shifted byte with probability
255/256, and within a few bytes in practice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

BLOCK = 64 * 1024
POOL_SIZE = 1 << 20
_M64 = (1 << 64) - 1
# A fixed seed: the stream is the same on every run and machine, so a failure
# reproduces.
_POOL_SEED = 0x666F726B

_pool_cache: list[bytes] = []


def _pool() -> bytes:
    """The random pool, built on first use (about a millisecond)."""
    if not _pool_cache:
        # The pool is BLOCK bytes longer so that every window fits without wrapping.
        _pool_cache.append(random.Random(_POOL_SEED).randbytes(POOL_SIZE + BLOCK))
    return _pool_cache[0]


def mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class Stream:
    """An endless, deterministic pseudo-random byte stream; one per seed.

    Args:
        seed: any integer; different seeds give unrelated streams.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._key = mix64(seed & _M64)
        self._pool = _pool()
        self._view = memoryview(self._pool)

    def _window(self, block: int) -> int:
        """Where block number ``block`` starts in the pool."""
        return mix64(self._key ^ block) % POOL_SIZE

    def _spans(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """``(index into the requested range, pool start, length)`` per window piece."""
        done = 0
        while done < length:
            block, into = divmod(offset + done, BLOCK)
            size = min(BLOCK - into, length - done)
            yield done, self._window(block) + into, size
            done += size

    def pieces(self, offset: int, length: int) -> Iterator[memoryview]:
        """Zero-copy views that together are stream bytes ``[offset, offset+length)``."""
        for _, start, size in self._spans(offset, length):
            yield self._view[start : start + size]

    def read(self, offset: int, length: int) -> bytes:
        """Stream bytes ``[offset, offset+length)`` as one ``bytes``."""
        return b"".join(self.pieces(offset, length))

    def byte_at(self, offset: int) -> int:
        return self._pool[self._window(offset // BLOCK) + offset % BLOCK]

    def first_mismatch(self, offset: int, data: bytes | bytearray | memoryview) -> int | None:
        """Compare ``data`` with the stream from ``offset``.

        Returns:
            None when every byte matches, else the index in ``data`` of the first
            byte that differs.
        """
        view = memoryview(data)
        for index, start, size in self._spans(offset, len(view)):
            piece = view[index : index + size]
            if not self._pool.startswith(piece, start):
                expected = self._view[start : start + size]
                for k in range(size):
                    if piece[k] != expected[k]:
                        return index + k
        return None


# -- problems --------------------------------------------------------------------------

# Kinds of problem. The data kinds mean the server returned wrong bytes (exit 1); the
# others mean a connection failed (exit 2 when no data problem was seen).
MISMATCH = "mismatch"
SHORT = "short"
EXTRA = "extra"
NO_EOF = "no-eof"
SELF_CONNECT = "self-connect"
DATA_KINDS = frozenset({MISMATCH, SHORT, EXTRA, NO_EOF, SELF_CONNECT})
TIMEOUT = "timeout"  # connecting took longer than --timeout
WORKER = "worker"  # a client process died: a bug in the benchmark itself


@dataclass(frozen=True)
class Problem:
    """One thing that went wrong on one connection.

    Attributes:
        kind: one of the kinds above, or an errno name (``ECONNREFUSED``).
        conn: which connection, e.g. ``"w3.c17"`` (worker 3, its 17th connection).
        offset: the offset in the connection's echo where it happened, if any.
        detail: the rest of the explanation, human-readable.
    """

    kind: str
    conn: str
    offset: int | None = None
    detail: str = ""

    def describe(self) -> str:
        where = f"{self.conn}: " if self.conn else ""
        head = {
            MISMATCH: "mismatch",
            SHORT: "short echo",
            EXTRA: "extra bytes",
            NO_EOF: "missing EOF",
            SELF_CONNECT: "connected to itself",
        }.get(self.kind, self.kind)
        at = "" if self.offset is None else f" at offset {self.offset}"
        tail = f": {self.detail}" if self.detail else ""
        return f"{where}{head}{at}{tail}"


class VerifyError(Exception):
    """Raised by the workers to abandon a connection; carries the ``Problem``."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.describe())
        self.problem = problem


def mismatch(conn: str, offset: int, expected: int, got: int) -> Problem:
    """The problem for byte ``offset`` of a connection's echo being ``got``."""
    return Problem(MISMATCH, conn, offset, f"expected 0x{expected:02x}, got 0x{got:02x}")


def short(conn: str, offset: int, expected: int, why: str) -> Problem:
    return Problem(SHORT, conn, offset, f"{why} after {offset} of {expected} bytes")


def extra_bytes(conn: str, offset: int, data: bytes) -> Problem:
    detail = f"{len(data)}+ bytes after the last echoed byte: {data[:16]!r}"
    return Problem(EXTRA, conn, offset, detail)


def no_eof(conn: str, offset: int, timeout: float) -> Problem:
    return Problem(
        NO_EOF, conn, offset, f"the server kept the connection open {timeout:g}s after our EOF"
    )
