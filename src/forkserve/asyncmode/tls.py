"""TLS for a worker's connection, over memory BIOs: the half-close the other modes keep.

asyncio's TLS transport (and uvloop's) ends a connection at the client's TCP
half-close (a FIN without close_notify, what ``forkserve client``, ``socat`` and
``openssl s_client`` send at the end of their input), and drops what the handler
writes after it: an echo lost its tail, the client saw no close_notify, and a
chargen could spin on a connection it could no longer write to. The sync modes
read that FIN as the end of the client's data and answer in full, then send
close_notify (child.tls). ``TLSTransport`` does the same for a worker: it is the
protocol of the plain socket's transport and the transport of the handler's
streams, and runs an ``ssl.SSLObject`` between them (the memory-BIO API asyncio's
own sslproto uses):

- a FIN, with or without close_notify first, is the end of the client's data
  (``eof_received`` for the handler's protocol); writing goes on;
- ``close()`` sends close_notify, then the FIN, once what was written is out;
- the socket's flow control passes through both ways (``pause_reading`` from a
  full stream buffer; ``pause_writing`` for ``drain``).

Resource handling: the plain transport is this object's; ``close()``/``abort()``
close it. Error handling: a failed handshake fails ``handshake`` (the alert is
sent first); a bad record after it ends the connection (the handler sees its end
of data, then the connection lost).
"""

from __future__ import annotations

import asyncio
import ssl

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

# Plain text handed to the handler's protocol per call at most (a TLS record is 16 KiB).
READ_SIZE = 256 * 1024


class TLSTransport(asyncio.Transport, asyncio.Protocol):
    """TLS between a plain transport (below) and a handler's protocol (above)."""

    def __init__(
        self, context: ssl.SSLContext, app: asyncio.Protocol, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self.context = context
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.app = app
        self.loop = loop
        self.raw: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.closing = False
        self.paused = False  # the handler's stream buffer is full
        self.raw_eof = False  # the client's FIN arrived
        self.eof = False  # the handler was told its client's data ended
        self.lost = False

    # -- below: the plain socket's transport -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment] # uvloop's is no subclass
        self.step_handshake()

    def step_handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return
        except ssl.SSLError as exc:
            self.flush()  # the alert, for the client to see why
            self.handshake.set_exception(exc)
            return
        self.flush()
        self.handshake.set_result(None)
        self.app.connection_made(self)
        self.read()  # what came with the handshake's last flight

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.handshake.done():
            self.step_handshake()
        elif self.handshake.exception() is None:
            self.read()

    def eof_received(self) -> bool:
        """The client's FIN: the end of its data once what is buffered is read; the
        connection stays open for the reply (returns True)."""
        self.raw_eof = True
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionResetError("closed in the TLS handshake"))
            return False
        self.read()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.handshake.done():
            self.handshake.set_exception(exc or ConnectionResetError("closed in the handshake"))
        elif self.handshake.exception() is None:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    def read(self) -> None:
        """Hand the plain text on, until the BIO is empty or the handler's buffer full."""
        while not self.paused and not self.lost:
            try:
                chunk = self.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client's data ended
                self.end_of_data()
                break
            except ssl.SSLError:  # a bad record: nothing more can be read
                self.end_of_data()
                self.abort()
                break
            if not chunk:
                self.end_of_data()
                break
            self.app.data_received(chunk)
        self.flush()  # a read may answer (a TLS 1.3 key update)
        if self.raw_eof and not self.paused and not self.incoming.pending:
            self.end_of_data()

    def end_of_data(self) -> None:
        if not self.eof:
            self.eof = True
            self.app.eof_received()  # its answer is ignored: the reply may follow

    def flush(self) -> None:
        if self.outgoing.pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self.outgoing.read())

    # -- above: the handler's streams ---------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing or self.lost:
            return  # as asyncio's transports: a write after close goes nowhere
        self.tls.write(data)  # all of it: the outgoing BIO grows as needed
        self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close of its own: close() ends both ways

    def write_eof(self) -> None:
        raise NotImplementedError("TLS cannot half-close: close() sends close_notify")

    def close(self) -> None:
        """close_notify, then the FIN once everything written is out."""
        if self.closing:
            return
        self.closing = True
        if not self.lost and self.handshake.done() and self.handshake.exception() is None:
            try:
                self.tls.unwrap()
            except ssl.SSLError:
                pass  # SSLWantReadError: close_notify sent; the client's is not awaited
            self.flush()
        if self.raw is not None:
            self.raw.close()

    def abort(self) -> None:
        self.closing = True
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self.closing or self.lost or self.raw is None or self.raw.is_closing()

    def pause_reading(self) -> None:
        self.paused = True
        if self.raw is not None:
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.raw is not None and not self.lost:
            self.raw.resume_reading()
            self.loop.call_soon(self.read)  # what the BIO still holds

    def is_reading(self) -> bool:
        return not self.paused

    def get_write_buffer_size(self) -> int:
        below = self.raw.get_write_buffer_size() if self.raw is not None else 0
        return below + self.outgoing.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sslcontext":
            return self.context
        if name == "ssl_object":
            return self.tls
        if name == "peercert":
            return self.tls.getpeercert()
        if name == "cipher":
            return self.tls.cipher()
        if name == "compression":
            return self.tls.compression()
        return self.raw.get_extra_info(name, default) if self.raw is not None else default


async def accept_tls(
    context: ssl.SSLContext, sock: socket.socket, app: asyncio.Protocol, deadline: float | None
) -> TLSTransport:
    """The handshake on an accepted ``sock`` (within ``deadline`` seconds, if any);
    then ``app`` is connected to the returned transport.

    Raises:
        OSError: the handshake failed (ssl.SSLError: the alert was sent), or the
            client went; TimeoutError: it took longer than ``deadline``. ``sock``
            is closed then.
    """
    loop = asyncio.get_running_loop()
    layer = TLSTransport(context, app, loop)
    try:
        await loop.connect_accepted_socket(lambda: layer, sock)
    except OSError:
        sock.close()
        raise
    try:
        async with asyncio.timeout(deadline):
            await layer.handshake
    except BaseException:
        layer.abort()
        raise
    return layer
