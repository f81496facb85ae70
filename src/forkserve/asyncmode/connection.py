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

from forkserve.asyncmode.tls import accept_tls
from forkserve.child.edge import EXIT_EDGE_FAILED
from forkserve.child.handler import EXIT_HANDLER_OK, EXIT_HANDLER_RAISED, tls_peer_gone
from forkserve.child.prelude import EXIT_HANDSHAKE_TIMEOUT, EXIT_IDLE_TIMEOUT
from forkserve.core.address import format_address
from forkserve.core.logline import escape_controls

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Callable, Coroutine, Mapping
    from typing import Any, Protocol

    from forkserve._log import Log
    from forkserve.child.edge import Edge
    from forkserve.core.proxy import ProxyHeader

    class AsyncService(Protocol):
        """What ``serve`` reads of asyncmode.service's ``AsyncService`` (a Protocol,
        so that module, which imports this one to serve, is not imported back)."""

        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, Any]]
        banner: bytes
        idle_timeout: float
        handshake_timeout: float
        plain_echo: bool
        log: Log
        edge: Edge | None

        @property
        def tls(self) -> ssl.SSLContext | None: ...


# The stream's buffer: asyncio's default (64 KiB). Reading pauses when it is full.
STREAM_LIMIT = 64 * 1024


class IdleProtocol(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that notes when data last arrived (``--idle-timeout``)."""

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(reader, loop=loop)
        self.loop = loop
        self.last = loop.time()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        super().data_received(data)


class EchoProtocol(asyncio.Protocol):
    """The built-in echo without streams (``AsyncService.plain_echo``): what arrives
    is written back from the callback, reading pauses while the client does not
    read, and the client's end of file closes the connection once every byte is
    back (the half-close a stream-based echo keeps, at a third of its cost per
    message: docs/performance.md)."""

    def __init__(self, done: asyncio.Future[int]) -> None:
        self.done = done
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close, once the write buffer is flushed

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(EXIT_HANDLER_OK)  # a reset is the client's choice


async def serve_echo(sock: socket.socket) -> int:
    """The built-in echo on a plain connection (see EchoProtocol)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: EchoProtocol(done), sock)
    except OSError:
        sock.close()
        return EXIT_HANDLER_OK
    try:
        return await done
    finally:
        transport.close()


async def serve(
    service: AsyncService,
    sock: socket.socket,
    peer: Any,
    env: Mapping[str, str],
    client: Any = None,
) -> int:
    """Serve ``sock`` with ``service``'s handler; return the connection's exit code.

    ``peer`` is the client as the lines name it; ``env`` the variables its rule set
    and ``client`` the address a PROXY header named (None without one): both are
    the handler's through its writer (see ``Writer``).

    Resource handling: ``sock`` is closed whatever happens (the transport owns it
    once made).
    """
    if service.plain_echo:
        return await serve_echo(sock)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    protocol = (
        IdleProtocol(reader, loop)
        if service.idle_timeout
        else asyncio.StreamReaderProtocol(reader, loop=loop)
    )
    banner = service.banner
    if service.handshake_timeout:
        if not await first_byte(service, sock, peer):
            sock.close()
            return EXIT_HANDSHAKE_TIMEOUT
        banner = b""  # sent already
    transport = await open_transport(service, sock, peer, protocol)
    if transport is None:
        return EXIT_EDGE_FAILED
    extra = {"env": env} if client is None else {"env": env, "peername": client}
    writer = Writer(transport, protocol, reader, loop, extra)
    try:
        return await run_handler(
            service, banner, reader=reader, writer=writer, protocol=protocol, peer=peer
        )
    finally:
        transport.close()


async def open_transport(
    service: AsyncService, sock: socket.socket, peer: Any, protocol: asyncio.Protocol
) -> asyncio.Transport | None:
    """The connection's transport, TLS's after its handshake (asyncmode.tls: why
    not asyncio's); None when the handshake failed (logged, ``sock`` closed)."""
    context = service.tls
    try:
        if context is not None:
            deadline = service.edge.deadline if service.edge is not None else None
            layer = await accept_tls(context, sock, protocol, deadline or None)
            log_tls(service, peer, layer.tls)
            return layer
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        sock.close()
        log_failed_handshake(service, peer, exc)
        return None
    return transport


class Writer(asyncio.StreamWriter):
    """The handler's writer: ``get_extra_info("env")`` is a read-only mapping of the
    variables the allowing rule set (what a sync handler finds in os.environ: a
    worker's environment is shared by its connections), and behind PROXY
    ``get_extra_info("peername")`` is the client the header named, as a sync
    handler's ``peer`` is (``writer.transport`` still tells the balancer's)."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.BaseProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self.extra = extra

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self.extra:
            return self.extra[name]
        return super().get_extra_info(name, default)


async def run_handler(
    service: AsyncService,
    banner: bytes,
    *,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: asyncio.StreamReaderProtocol,
    peer: Any,
) -> int:
    """The banner, then the handler (within the idle timeout); its exit code."""
    try:
        if banner:
            writer.write(banner)
        if isinstance(protocol, IdleProtocol):
            await idle_bounded(service, reader, writer, protocol, peer)
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
        report_error(service, format_address(peer))
        return EXIT_HANDLER_RAISED
    return EXIT_HANDLER_OK


async def idle_bounded(
    service: AsyncService,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    protocol: IdleProtocol,
    peer: Any,
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
            log_timeout(service, peer, "idle", idle)
            raise TimeoutError


async def read_proxy(
    edge: Edge, sock: socket.socket, peer: Any, number: int
) -> tuple[Any, Any] | None:
    """Read the PROXY header (core.proxy's parser), never a byte past it: return
    the client and the address it connected to (None, None for a LOCAL header), or
    None when the connection ends here (untrusted, malformed, closed, too slow:
    logged as child.edge logs them; ``sock`` is then closed).
    """
    from forkserve._errors import ProxyProtocolError
    from forkserve.core.proxy import ProxyReader
    from forkserve.core.proxynet import in_networks

    loop = asyncio.get_running_loop()
    balancer = format_address(peer)
    host = peer[0] if isinstance(peer, tuple) else ""
    reader = ProxyReader(edge.proxy)
    reason = ""
    if edge.trusted and not in_networks(host, edge.trusted):
        reason = f"untrusted source {balancer} (see --proxy-from)"
    try:
        async with asyncio.timeout(edge.deadline):
            while reader.result is None and not reason:
                data = await loop.sock_recv(sock, reader.wanted())
                if not data:
                    sock.close()
                    return None  # a TCP check or a scan: nothing to log
                reader.feed(data)
    except ProxyProtocolError as exc:
        reason = str(exc)
    except TimeoutError:
        sock.close()
        after = f"{edge.deadline:g}s"
        edge.log.info("timeout", pid=os.getpid(), peer=balancer, kind="handshake", after=after)
        return None
    except OSError as exc:
        reason = type(exc).__name__
    header = reader.result
    if header is None:
        sock.close()
        edge.log.info("reject", pid=os.getpid(), peer=balancer, reason="proxy", detail=reason)
        return None
    log_header(edge, header, balancer, number)
    return header.source, header.destination


def log_header(edge: Edge, header: ProxyHeader, balancer: str, number: int) -> None:
    """The ``proxy`` line, as child.edge writes it."""
    fields: dict[str, object] = {"pid": os.getpid(), "conn": number}
    fields["peer"] = format_address(header.source) if header.source is not None else balancer
    fields.update(via=balancer, version=header.version)
    if header.source is None:
        fields["command"] = header.command if header.version == 2 else header.family
    if header.authority is not None:
        fields["authority"] = header.authority
    edge.log.info("proxy", **fields)


async def first_byte(service: AsyncService, sock: socket.socket, peer: Any) -> bool:
    """--handshake-timeout (without PROXY or TLS): the banner, then wait until the
    client has sent something; False (logged) when the time ran out first."""
    loop = asyncio.get_running_loop()
    if service.banner:
        await loop.sock_sendall(sock, service.banner)
    readable = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(True)

    loop.add_reader(sock.fileno(), ready)
    try:
        async with asyncio.timeout(service.handshake_timeout):
            await readable
    except TimeoutError:
        log_timeout(service, peer, "handshake", service.handshake_timeout)
        return False
    finally:
        loop.remove_reader(sock.fileno())
    return True


def log_failed_handshake(service: AsyncService, peer: Any, exc: Exception) -> None:
    """A TLS handshake that failed, as child.edge logs one: ``timeout`` or ``reject``."""
    if isinstance(exc, TimeoutError) and service.edge is not None:  # accept_tls's deadline
        log_timeout(service, peer, "handshake", service.edge.deadline)
        return
    detail = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    peer_text = format_address(peer)
    service.log.info("reject", pid=os.getpid(), peer=peer_text, reason="tls", detail=detail)


def log_tls(service: AsyncService, peer: Any, tls: ssl.SSLObject) -> None:
    """The ``tls`` line (debug), as child.edge writes it."""
    cipher = tls.cipher()
    version = tls.version() or ""
    peer_text = format_address(peer)
    cipher_name = cipher[0] if cipher else ""
    service.log.debug("tls", pid=os.getpid(), peer=peer_text, version=version, cipher=cipher_name)


def log_timeout(service: AsyncService, peer: Any, kind: str, seconds: float) -> None:
    """The ``timeout`` line, as child.prelude writes it."""
    after = f"{seconds:g}s"
    service.log.info("timeout", pid=os.getpid(), peer=format_address(peer), kind=kind, after=after)


def report_error(service: AsyncService, peer: str) -> None:
    """The handler's traceback, as a ``handler-error`` event (its text escaped; with
    JSON logs, the traceback is a field of the one line)."""
    text = traceback.format_exc()
    error = text.rstrip("\n").rpartition("\n")[2]
    log = service.log
    if log.format == "json":
        log.warning("handler-error", pid=os.getpid(), peer=peer, error=error, traceback=text)
        return
    log.warning("handler-error", pid=os.getpid(), peer=peer, error=error)
    log.raw(escape_controls(text))
