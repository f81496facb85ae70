"""The Python floor: the least a Python fork-per-connection echo server can do.

A selector over the listener and a wakeup socketpair; accept; fork; the child echoes
until the client half-closes and ends with ``os._exit``; SIGCHLD only wakes the loop
(``signal.set_wakeup_fd``), which reaps with ``waitpid(-1, WNOHANG)``; ``gc.freeze()``
once before serving, so a collection in a child never touches the parent's objects.
Nothing else: no limits, no logs, no admission, no metrics. forkserve's fork mode
does all of that on top, so its rate over this one's is what those features cost
each connection (make bench runs both on the same interpreter).

It prints the bound port on one line of stdout once listening, like
``forkserve serve --print-port``; SIGTERM ends it.

Usage: ``python benchmarks/echo_floor.py [PORT]`` (default 0: a free port), on 127.0.0.1.
"""

from __future__ import annotations

import gc
import os
import selectors
import signal
import socket
import sys

READ_SIZE = 64 * 1024


def echo(conn: socket.socket) -> None:
    """Send back every byte until the client half-closes."""
    while data := conn.recv(READ_SIZE):
        conn.sendall(data)


def serve_child(conn: socket.socket, close: list[int]) -> None:
    """In the child: drop the parent's descriptors, echo, and never return."""
    status = 1
    try:
        for fd in close:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        echo(conn)
        status = 0
    except OSError:  # the client reset the connection
        status = 0
    finally:
        os._exit(status)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    listener.setblocking(False)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd sees it
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    close_in_child = [listener.fileno(), wake_r.fileno(), wake_w.fileno(), sel.fileno()]
    gc.freeze()
    print(listener.getsockname()[1], flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is wake_r:
                while True:
                    try:
                        if not wake_r.recv(512):
                            break
                    except BlockingIOError:
                        break
                reap()
                continue
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                if os.fork() == 0:
                    serve_child(conn, close_in_child)
                conn.close()


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    main()
