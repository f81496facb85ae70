"""A line-based key-value store: one store per connection, in that connection's process.

Serve it from the repository root, then talk to it with any line client:

    forkserve serve 9002 --handler examples.kv:handle
    printf 'SET colour blue\\nGET colour\\nKEYS\\nQUIT\\n' | forkserve client 127.0.0.1 9002

The protocol, one command a line (LF or CRLF), one reply line each::

    SET key value   ->  OK            (the value is the rest of the line)
    GET key         ->  VALUE value   or  NOT_FOUND
    DEL key         ->  DELETED       or  NOT_FOUND
    KEYS            ->  KEYS k1 k2 ... (sorted)
    QUIT            ->  BYE, and the server closes the connection
    anything else   ->  ERROR ...

The store is per connection: each connection has its own process, so state lives
exactly as long as the connection and no client can see another's keys. State meant
to be shared between connections belongs in a file or a database, not in a global:
a global is copied into each child at fork, never shared back.

The protocol is a plain class (``Session``) with no socket in it, tested on its own;
``handle`` is the thin part that reads lines and writes replies.
"""

from __future__ import annotations

import socket

# A line longer than this is refused and the connection closed: a client must not
# be able to make the process buffer without bound.
MAX_LINE = 4096


class Session:
    """The store and the commands of one connection (no I/O)."""

    def __init__(self) -> None:
        self.store: dict[str, str] = {}
        self.closed = False

    def command(self, line: str) -> str:
        """Apply one command line; return the reply line (without its newline)."""
        verb, _, rest = line.strip().partition(" ")
        method = getattr(self, "do_" + verb.lower(), None) if verb.isalpha() else None
        if method is None:
            return f"ERROR unknown command {verb[:32]!r}"
        reply: str = method(rest)
        return reply

    def do_set(self, rest: str) -> str:
        key, _, value = rest.partition(" ")
        if not key:
            return "ERROR usage: SET key value"
        self.store[key] = value
        return "OK"

    def do_get(self, rest: str) -> str:
        key = rest.strip()
        if key not in self.store:
            return "NOT_FOUND"
        return f"VALUE {self.store[key]}"

    def do_del(self, rest: str) -> str:
        if self.store.pop(rest.strip(), None) is None:
            return "NOT_FOUND"
        return "DELETED"

    def do_keys(self, rest: str) -> str:
        return " ".join(["KEYS", *sorted(self.store)])

    def do_quit(self, rest: str) -> str:
        self.closed = True
        return "BYE"


def handle(conn: socket.socket, peer: object) -> None:
    """forkserve handler: serve one client's session until QUIT or end of input."""
    session = Session()
    with conn.makefile("rb") as lines:
        while not session.closed:
            raw = lines.readline(MAX_LINE + 1)
            if not raw:
                return  # the client closed: its store goes with this process
            if len(raw) > MAX_LINE:
                conn.sendall(b"ERROR line too long\r\n")
                return
            reply = session.command(raw.decode("utf-8", "replace"))
            conn.sendall(reply.encode() + b"\r\n")
