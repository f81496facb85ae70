"""A tiny HTTP/1.0 server: one request and one response per connection.

Serve it from the repository root, then ask it with curl:

    forkserve serve 8080 --handler examples/httpd.py:handle
    curl -i http://127.0.0.1:8080/

``GET /`` (and ``HEAD /``) answer with a short text page naming the process that
served the request, so repeated requests show a new pid each time; any other path is
404, any other method 405, and a request that is not HTTP gets 400. Every response
closes the connection (HTTP/1.0, ``Connection: close``), which is exactly the shape
fork-per-connection serves best.

The request head is read with a deadline and a size limit: a client that sends
nothing, or too much, costs one process for at most ``REQUEST_TIMEOUT`` seconds.
"""

from __future__ import annotations

import os
import socket

REQUEST_TIMEOUT = 10.0
MAX_HEAD = 8192
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def read_head(conn: socket.socket) -> bytes | None:
    """The request head up to the blank line, or None if it never completes."""
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        try:
            chunk = conn.recv(MAX_HEAD)
        except TimeoutError:
            return None
        if not chunk or len(data) + len(chunk) > MAX_HEAD:
            return None
        data += chunk
    return data


def respond(head: bytes | None, peer: tuple[object, ...]) -> tuple[int, bytes, bool]:
    """Decide the response: status, body, and whether the body is sent (not HEAD)."""
    if head is None:
        return 400, b"incomplete or oversized request\n", True
    request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, b"not an HTTP/1.x request line\n", True
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        return 405, b"only GET and HEAD\n", True
    if target != b"/":
        return 404, b"only / is here\n", method == b"GET"
    body = f"hello from process {os.getpid()}; you are {peer[0]} port {peer[1]}\n".encode()
    return 200, body, method == b"GET"


def handle(conn: socket.socket, peer: tuple[object, ...]) -> None:
    """forkserve handler: read one request, write one response, close."""
    status, body, send_body = respond(read_head(conn), peer)
    header = (
        f"HTTP/1.0 {status} {REASONS[status]}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    if status == 405:
        header += "Allow: GET, HEAD\r\n"
    conn.sendall(header.encode() + b"\r\n" + (body if send_body else b""))
