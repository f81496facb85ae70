"""inetd's built-in services as ``async def handler(reader, writer)`` (async mode).

The same services as child.builtins (RFC 862 echo, 863 discard, 867 daytime, 864
chargen), for a worker's event loop. No asyncio import: the coroutines only await
the streams they are given, so the supervisor can name them without loading asyncio.
"""

from __future__ import annotations

import time

from forkserve.child.builtins import chargen_block, daytime_line

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the parent stays free of typing
if TYPE_CHECKING:
    from asyncio import StreamReader, StreamWriter
    from collections.abc import Callable, Coroutine

# Reads of this much at most: a bulk transfer moves in few calls, and the stream's
# own buffer (see asyncmode.service STREAM_LIMIT) bounds what a connection holds.
READ_SIZE = 64 * 1024


async def echo(reader: StreamReader, writer: StreamWriter) -> None:
    """RFC 862: every byte back, until the client closes; ``drain`` is the back-pressure."""
    while data := await reader.read(READ_SIZE):
        writer.write(data)
        await writer.drain()


async def discard(reader: StreamReader, writer: StreamWriter) -> None:
    """RFC 863: read and drop everything until the client closes."""
    while await reader.read(READ_SIZE):
        pass


async def daytime(reader: StreamReader, writer: StreamWriter) -> None:
    """RFC 867: the date and time as text, then close."""
    writer.write(daytime_line(time.time()))
    await writer.drain()


async def chargen(reader: StreamReader, writer: StreamWriter) -> None:
    """RFC 864: the rotating 72-character lines until the client goes away (its
    input is left in the stream's buffer, which stops reading once full)."""
    block = chargen_block()
    # A closing transport takes writes and drain() returns at once (asyncio), so
    # without this check the loop would spin on a client that has gone.
    while not writer.is_closing():
        writer.write(block)
        await writer.drain()


BUILTINS: dict[str, Callable[[StreamReader, StreamWriter], Coroutine[object, object, None]]] = {
    "echo": echo,
    "discard": discard,
    "daytime": daytime,
    "chargen": chargen,
}
