"""What workers tell the supervisor, one datagram per change (see prefork.worker).

On a SOCK_DGRAM socketpair shared by all workers (datagrams keep their boundaries,
and each send is atomic): ``R pid`` ready, ``A pid peer`` accepted, ``D pid peer``
denied, ``E pid code`` ended, ``P pid errno`` accept paused for lack of a resource,
``U pid errno`` resumed. The questions a worker asks on its own channel (per-source
limits) are core.gate's ``encode_question``/``decode_question``.
"""

from __future__ import annotations

# A status datagram is read with this buffer: a peer's text is length-capped.
STATUS_SIZE = 4096


def encode(kind: str, pid: int, detail: str = "") -> bytes:
    """One status datagram: ``KIND PID DETAIL``."""
    return f"{kind} {pid} {detail}".encode("utf-8", "backslashreplace")


def decode(data: bytes) -> tuple[str, int, str]:
    """Split a status datagram into ``(kind, pid, detail)``.

    Raises:
        ValueError: not a datagram ``encode`` wrote.
    """
    kind, pid, detail = data.decode("utf-8", "replace").split(" ", 2)
    return kind, int(pid), detail
