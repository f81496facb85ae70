"""forkserve: a multi-process TCP server for Linux, fork per connection done right.

The Python API::

    import forkserve

    def handler(conn, peer):
        conn.sendall(b"hello\\n")

    with forkserve.Server(("127.0.0.1", 9000), handler) as server:
        server.serve_forever()
"""

from __future__ import annotations

from forkserve._errors import (
    AddressError,
    BindError,
    ForkserveError,
    HandlerError,
    ProgramError,
    TemporaryError,
    UsageError,
)
from forkserve._log import Log
from forkserve.child.exec import Program
from forkserve.child.handler import Handler, echo
from forkserve.child.requesthandler import RequestHandler

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing is what a lean process avoids
if TYPE_CHECKING:
    from forkserve._server import Server


def __getattr__(name: str) -> object:
    """``forkserve.Server``, imported when first named (PEP 562): the forker imports
    ``forkserve.child`` and ``forkserve.forker`` without the supervisor's code."""
    if name == "Server":
        from forkserve._server import Server

        return Server
    raise AttributeError(f"module 'forkserve' has no attribute {name!r}")


__all__ = [
    "AddressError",
    "BindError",
    "ForkserveError",
    "Handler",
    "HandlerError",
    "Log",
    "Program",
    "ProgramError",
    "RequestHandler",
    "Server",
    "TemporaryError",
    "UsageError",
    "__version__",
    "echo",
]
