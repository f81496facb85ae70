"""Handlers for the async mode's tests (``--handler tests/data/async_handlers.py:NAME``)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any


async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Each line back in capitals, until the client closes."""
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()


async def boom(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a line, then fail: the handler's bug."""
    await reader.readline()
    raise RuntimeError("async boom")


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo, and ignore a cancellation's first attempt at nothing: plain echo."""
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()


async def nap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Block the worker's loop for a second on the first line: a blocking handler."""
    await reader.readline()
    time.sleep(1.0)  # what not to do in async mode: every connection of the worker waits
    writer.write(b"woke\n")
    await writer.drain()


def sync_echo(conn: socket.socket, peer: Any) -> None:
    """A plain (sync) handler: async mode refuses it."""
    while data := conn.recv(4096):
        conn.sendall(data)


async def peer_env(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The client's address as the writer names it, and ROLE from the rule that let
    it in ("-" if unset), on a line; then an echo."""
    host, port = writer.get_extra_info("peername")[:2]
    env = writer.get_extra_info("env", {})
    writer.write(f"{host}:{port} {env.get('ROLE', '-')}\n".encode())
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()


async def peer_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """api_server.peer_echo's twin: the peer (the writer's peername), a space, an echo."""
    host, port = writer.get_extra_info("peername")[:2]
    writer.write(f"{host}:{port} ".encode())
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()


async def role(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """ROLE from the rule that let the client in ("-" if unset), then close."""
    writer.write(writer.get_extra_info("env", {}).get("ROLE", "-").encode())
