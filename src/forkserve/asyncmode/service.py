"""What async mode runs for each connection: the handler, with the settings around it.

``AsyncService`` is built in the supervisor (without importing asyncio: the
supervisor never runs an event loop) and forked into the workers, which await
``asyncmode.connection.serve`` for each connection. It is also a plain ``Service``
(``service(conn, info) -> exit code``): at a graceful stop the supervisor accepts
what waits in the queue and forks a child for each, as prefork does (prefork.pool,
``Pool.stop``); that child runs the handler in an event loop of its own.
"""

from __future__ import annotations

from forkserve._errors import UsageError
from forkserve.asyncmode.builtins import BUILTINS
from forkserve.child import builtins as sync_builtins
from forkserve.child.handler import echo as sync_echo
from forkserve.child.handler import is_coroutine_function

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    import socket
    import ssl
    from asyncio import StreamReader, StreamWriter
    from collections.abc import Callable, Coroutine

    from forkserve._log import Log
    from forkserve.child.connection import Connection
    from forkserve.child.edge import Edge
    from forkserve.child.prelude import Prelude

    AsyncHandler = Callable[[StreamReader, StreamWriter], Coroutine[object, object, object]]


def as_async_handler(handler: object) -> AsyncHandler:
    """The coroutine function async mode runs for ``handler``: a built-in's async
    twin (the default ``echo`` included), or ``handler`` itself if it is an
    ``async def``.

    Raises:
        UsageError: a plain (sync) handler: it would block the worker's event loop.
    """
    for name, builtin in sync_builtins.BUILTINS.items():
        if handler is builtin or (name == "echo" and handler is sync_echo):
            return BUILTINS[name]
    if not is_coroutine_function(handler):
        name = getattr(handler, "__qualname__", type(handler).__name__)
        raise UsageError(
            f"handler {name} is not an async def: --mode async needs an async def "
            "handler(reader, writer)"
        )
    return handler  # type: ignore[return-value]


class AsyncService:
    """The handler and what runs around it: the banner, the idle timeout, TLS and
    the PROXY header (the edge), and the log a handler's traceback goes to."""

    __slots__ = (
        "banner",
        "edge",
        "handler",
        "handshake_timeout",
        "idle_timeout",
        "log",
        "plain_echo",
    )

    def __init__(
        self, handler: AsyncHandler, prelude: Prelude, edge: Edge | None, log: Log
    ) -> None:
        if prelude.rlimits:
            raise UsageError(
                "--limit-* set a connection's process's limits: in async mode a worker "
                "serves many connections (limit the server with ulimit instead)"
            )
        self.handler = handler
        self.banner = prelude.banner
        self.idle_timeout = prelude.idle_timeout
        self.handshake_timeout = prelude.handshake_timeout  # 0 with an edge: its own
        self.edge = edge
        self.log = log
        # The built-in echo with nothing around it runs as a protocol, without
        # streams (asyncmode.connection.EchoProtocol).
        self.plain_echo = (
            handler is BUILTINS["echo"]
            and not self.banner
            and not self.idle_timeout
            and not self.handshake_timeout
            and (edge is None or edge.tls is None)
        )

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The server's TLS context, if it serves TLS."""
        if self.edge is None or self.edge.tls is None:
            return None
        return self.edge.tls.context

    def __call__(self, conn: socket.socket, info: Connection) -> int:
        """Serve one connection in a process of its own (forked at a stop); its exit code."""
        import asyncio

        from forkserve.asyncmode.connection import serve

        return asyncio.run(serve(self, conn, info.peer, info.env))
