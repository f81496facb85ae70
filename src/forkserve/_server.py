"""The public Python API: ``forkserve.Server``."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType

from forkserve._address import parse_listen_address
from forkserve._errors import UsageError
from forkserve._exec import ExecService, Program
from forkserve._exec import describe as describe_program
from forkserve._handler import Handler, PythonService, Service, echo
from forkserve._listen import DEFAULT_BACKLOG, Listener
from forkserve._log import Log
from forkserve._loop import Loop

# The process models `forkserve serve --mode` offers; the benchmark suite runs each.
MODES = ("fork",)
DEFAULT_MAX_CONNS = 1000
DEFAULT_GRACE = 10.0


class Server:
    """A TCP server that forks one process per connection and runs ``handler`` in it.

    ``handler`` is a Python callable, the name of one (``"pkg.module:function"``,
    ``"path/file.py:function"`` or a built-in: ``"echo"``, ``"discard"``,
    ``"daytime"``, ``"chargen"``), or a ``forkserve.Program`` to exec (exec mode).

    Binds when constructed, so ``address`` is known (port 0 picks a free port) and a
    bind failure raises here, before anything else starts.

    Args:
        address: ``(host, port)`` or ``"[HOST:]PORT"`` text (``"[::1]:9000"``).
        handler: called as ``handler(conn, peer)`` in the child (see ``Handler``); a
            name, loaded now; or a ``Program``, executed with the connection on fd
            0 and 1 and the UCSPI environment.
        max_conns: children at once; at the limit, new clients wait in the backlog.
        backlog: the listen(2) queue length.
        grace: on SIGTERM or SIGINT, how long children may take to finish before
            they are sent SIGTERM (and SIGKILL 3 seconds later).
        banner: bytes sent to each client before the handler or program starts.
        log: where events go; by default one line each on standard error.

    Raises:
        UsageError: an argument out of range, or an address that does not parse;
            ``HandlerError`` for a handler name that does not load.
        BindError: the address cannot be bound (in use, not local, not permitted).

    Resource handling: owns the listening socket; ``close()`` (or leaving the ``with``
    block) closes it. ``serve_forever()`` installs handlers for SIGCHLD, SIGTERM,
    SIGINT, SIGQUIT and others for its duration, so call it from the main thread. It
    reaps with ``waitpid(-1)``: children the program started by other means are reaped
    too (and logged as unknown at ``-v``).
    """

    def __init__(
        self,
        address: tuple[str, int] | str = ("127.0.0.1", 0),
        handler: Handler | Program | str = echo,
        *,
        max_conns: int = DEFAULT_MAX_CONNS,
        backlog: int = DEFAULT_BACKLOG,
        grace: float = DEFAULT_GRACE,
        banner: bytes = b"",
        log: Log | None = None,
    ) -> None:
        if max_conns < 1:
            raise UsageError(f"max_conns must be at least 1, not {max_conns}")
        if backlog < 1:
            raise UsageError(f"backlog must be at least 1, not {backlog}")
        if not grace >= 0:
            raise UsageError(f"grace must be 0 or more seconds, not {grace}")
        if not isinstance(banner, bytes):
            raise UsageError(f"banner must be bytes, not {type(banner).__name__}")
        host, port = parse_listen_address(address) if isinstance(address, str) else address
        self.max_conns = max_conns
        self.grace = grace
        self.log = log if log is not None else Log()
        if isinstance(handler, str):
            from forkserve._load import load_handler

            handler = load_handler(handler)
        self.handler = handler
        self.service: Service
        if isinstance(handler, Program):
            self.service = ExecService(handler, self.log, banner)
        else:
            self.service = PythonService(handler, banner)
        self.listener = Listener.bind(host, port, backlog)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        return self.listener.address

    @property
    def port(self) -> int:
        return self.listener.port

    def serve_forever(self, ready: Callable[[Server], None] | None = None) -> None:
        """Serve until SIGTERM or SIGINT (graceful) or SIGQUIT (fast); then return.

        Args:
            ready: called once signals are handled and the loop is about to wait:
                the moment to announce readiness (``--print-port`` does).
        """
        fields: dict[str, object] = {
            "address": self.listener.describe(),
            "mode": "fork",
            "max_conns": self.max_conns,
            "pid": os.getpid(),
        }
        if isinstance(self.handler, Program):
            fields["program"] = describe_program(self.handler.argv)
        self.log.notice("listen", **fields)
        loop = Loop(
            self.listener,
            self.service,
            self.log,
            max_conns=self.max_conns,
            grace=self.grace,
            ready=None if ready is None else (lambda: ready(self)),
        )
        loop.run()
        self.log.notice("stopped", pid=os.getpid())

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
