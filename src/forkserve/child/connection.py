"""What a connection's process is told about its connection (``Connection``).

Its own module so that the child's steps (edge, prelude, handler, exec, ask) can all
name it without importing one another.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from typing import Any


class Connection:
    """What the parent knows about a connection when it forks the child for it.

    Attributes:
        peer: the client's address, as ``getpeername()`` returns it; on a Unix
            socket its credentials, ``(pid, uid, gid)`` (plain ints: see
            parent.unixlistener).
        connnum: connections open from the client's address, this one included
            (UCSPI's ``TCPCONNNUM``).
        env: extra environment variables for this connection's program or handler.
        local: the address the client connected to when it is not the socket's own
            (a PROXY header named it), else None: ``getsockname()`` tells.
        admit: behind the PROXY protocol, the admission the edge runs once the
            header named the client (``child.ask.Asker``): it returns None to go on, or
            the exit code of a refused connection (closed). None: decided already.
    """

    __slots__ = ("admit", "connnum", "env", "local", "peer")

    def __init__(self, peer: Any, connnum: int = 1, env: dict[str, str] | None = None) -> None:
        self.peer = peer
        self.connnum = connnum
        self.env = env if env is not None else {}
        self.local: Any = None
        self.admit: Callable[[socket.socket, Connection], int | None] | None = None
