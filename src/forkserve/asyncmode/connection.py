"""One connection in a worker's event loop: streams, the handler, its outcome.

Imported only where an event loop runs (a worker, or a child forked at a stop): it
imports asyncio, which the supervisor never loads.

The outcome is an exit code, as a fork-mode child's would be (README, exit codes):
0 the handler returned (or the client reset or went away), 1 it raised (logged
with its traceback as ``handler-error``: only this connection ends), 124 the idle
timeout ended it. A handler cancelled at the end of a stop's grace gets
CancelledError, which is not caught here: the worker then dies by SIGTERM and the
supervisor logs the connections it held with that status.
"""

from __future__ import annotations

import asyncio
import os
import traceback

from forkserve.child.handler import EXIT_HANDLER_OK, EXIT_HANDLER_RAISED, tls_peer_gone
from forkserve.child.prelude import EXIT_IDLE_TIMEOUT
from forkserve.core.logline import escape_controls

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Callable, Coroutine
    from typing import Any, Protocol

    from forkserve._log import Log

    class AsyncService(Protocol):
        """What ``serve`` reads of asyncmode.service's ``AsyncService`` (a Protocol,
        so that module, which imports this one to serve, is not imported back)."""

        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, Any]]
        banner: bytes
        idle_timeout: float
        log: Log

        @property
        def tls(self) -> ssl.SSLContext | None: ...


# The stream's buffer: asyncio's default (64 KiB). Reading pauses when it is full.
STREAM_LIMIT = 64 * 1024
# With TLS, the handshake must finish within this long (asyncio's default is 60 s).
TLS_HANDSHAKE_TIMEOUT = 10.0
# An exit code for a connection whose TLS handshake failed (as child.edge's).
EXIT_EDGE_FAILED = 0


class IdleProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that notes when data last arrived (``--idle-timeout``)."""

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self.loop = loop
        self.last = loop.time()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        super().data_received(data)


async def serve(service: AsyncService, sock: socket.socket, peer: Any, number: int) -> int:
    """Serve ``sock`` with ``service``'s handler; return the connection's exit code.

    Resource handling: ``sock`` is closed whatever happens (the transport owns it
    once made).
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = (
        IdleProtocol(reader, loop)
        if service.idle_timeout
        else asyncio.StreamReaderProtocol(reader, loop=loop)
    )
    context = service.tls
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            sock,
            ssl=context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if context is not None else None,
        )
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        service.log.info("tls-failed", pid=os.getpid(), conn=number, error=type(exc).__name__)
        return EXIT_EDGE_FAILED
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        return await run_handler(service, reader, writer, protocol, number)
    finally:
        transport.close()


async def run_handler(
    service: AsyncService,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: asyncio.StreamReaderProtocol,
    number: int,
) -> int:
    """The banner, then the handler (within the idle timeout); its exit code."""
    try:
        if service.banner:
            writer.write(service.banner)
        if isinstance(protocol, IdleProtocol):
            await idle_bounded(service, reader, writer, protocol, number)
        else:
            await service.handler(reader, writer)
        if writer.transport.get_write_buffer_size():
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return EXIT_HANDLER_OK
    except TimeoutError:
        return EXIT_IDLE_TIMEOUT
    except Exception as exc:  # noqa: BLE001 - a handler's bug ends its connection only
        if tls_peer_gone(exc):
            return EXIT_HANDLER_OK
        report_error(service, number)
        return EXIT_HANDLER_RAISED
    return EXIT_HANDLER_OK


async def idle_bounded(
    service: AsyncService,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: IdleProtocol,
    number: int,
) -> None:
    """Run the handler; end it with TimeoutError once nothing arrived for the idle
    timeout (checked once per timeout, not per read: no timer moves on each byte)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(service.handler(reader, writer))
    idle = service.idle_timeout
    while True:
        left = protocol.last + idle - loop.time()
        try:
            done, _ = await asyncio.wait([task], timeout=max(left, 0.0))
        except asyncio.CancelledError:
            task.cancel()  # a stop's end: the handler is cancelled with its connection
            raise
        if done:
            task.result()
            return
        if loop.time() - protocol.last >= idle:
            task.cancel()
            service.log.info("idle-timeout", pid=os.getpid(), conn=number, after=f"{idle:g}s")
            raise TimeoutError


def report_error(service: AsyncService, number: int) -> None:
    """The handler's traceback, as a ``handler-error`` event (its text escaped; with
    JSON logs, the traceback is a field of the one line)."""
    text = traceback.format_exc()
    error = text.rstrip("\n").rpartition("\n")[2]
    log = service.log
    if log.format == "json":
        log.warning("handler-error", pid=os.getpid(), conn=number, error=error, traceback=text)
        return
    log.warning("handler-error", pid=os.getpid(), conn=number, error=error)
    log.raw(escape_controls(text))
