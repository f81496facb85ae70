"""A trivial single-process echo server on uvloop: the client's ceiling.

``forkserve bench`` against this server measures how fast the benchmark client itself
can go on this machine; a server measured near that number is limited by the client,
not by itself. It prints the bound port on one line of stdout once listening, like
``forkserve serve --print-port``.

Usage: ``python benchmarks/echo_uvloop.py [PORT]`` (default 0: a free port), on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import signal
import sys


class Echo(asyncio.Protocol):
    """Write back whatever arrives; close after the client half-closes."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    # Backpressure: stop reading while the client is not reading its echo.

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once everything written has been sent


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    import uvloop

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    uvloop.run(serve(port))


if __name__ == "__main__":
    main()
