"""The chaos handler for async mode (see chaos_handler.py): the first byte says what to do.

E  echo the rest of the connection (what normal clients send)
R  raise an exception (the handler's bug: logged, this connection ends with exit 1)
H  hold: echo, like E

No S or M: in async mode a segfault or a memory limit ends the worker and every
connection it holds (tests/integration/test_async.py checks that they are logged
with its status and the worker is replaced).
"""

from __future__ import annotations

import asyncio


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    command = await reader.read(1)
    if command in (b"E", b"H"):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    elif command == b"R":
        raise RuntimeError("chaos: a handler bug")
