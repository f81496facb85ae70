"""socketserver's request handler classes, run unchanged as forkserve handlers.

A ``socketserver.BaseRequestHandler`` subclass (``StreamRequestHandler``,
``http.server.SimpleHTTPRequestHandler``, ``xmlrpc.server.SimpleXMLRPCRequestHandler``,
one's own) is run for each connection as ``socketserver`` runs it in
``ForkingMixIn``'s child: ``HandlerClass(request, client_address, server)``, whose
``__init__`` calls ``setup()``, ``handle()`` and ``finish()``. No thread and no
``serve_forever`` in the connection's process; ``StreamRequestHandler``'s ``timeout``
and ``disable_nagle_algorithm`` work as the class applies them in ``setup()``.

``self.server`` is a ``ServerView``: the attributes socketserver's servers have
(``server_address``, ``server_name``, ``server_port``, ``RequestHandlerClass``...),
then those of a server object of one's own (``RequestHandler(cls, server=obj)``:
an XML-RPC dispatcher with its registered functions, say).

Whether a handler is a class is decided once, when it is loaded (``handler_for``),
never per connection; a plain function never imports socketserver.
"""

from __future__ import annotations

import sys

from forkserve._errors import HandlerError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the forking parent stays free of typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from socket import socket as Socket
    from typing import Any

    from forkserve.child.handler import Handler

# What a server attribute is when neither forkserve nor the user's server object has
# it: SimpleXMLRPCServer's defaults, which its request handler reads.
SERVER_DEFAULTS: dict[str, object] = {"logRequests": True}


class RequestHandler:
    """A ``socketserver.BaseRequestHandler`` subclass as a forkserve handler.

    ``--handler pkg.mod:HandlerClass`` wraps the class in one; build one yourself to
    give the handler a server object: ``RequestHandler(SimpleXMLRPCRequestHandler,
    server=dispatcher)``, and pass it as the handler (``Server(address, it)``, or
    name it: ``--handler rpc.py:handler``).

    Args:
        handler_class: the class, or a ``functools.partial`` of one
            (``partial(SimpleHTTPRequestHandler, directory="/srv")``).
        server: an object whose attributes ``self.server`` also has (those forkserve
            sets win): what the handler class expects of its server beyond the socket
            server's own. None: only forkserve's.
        **attributes: more attributes of ``self.server`` (``logRequests=False``);
            they win over both.

    Raises:
        HandlerError: ``handler_class`` is not a ``BaseRequestHandler`` subclass.
    """

    __slots__ = ("attributes", "handler_class", "server")

    def __init__(self, handler_class: Any, server: object = None, **attributes: object) -> None:
        if request_handler_class(handler_class) is None:
            name = getattr(handler_class, "__name__", type(handler_class).__name__)
            raise HandlerError(f"{name} is not a socketserver.BaseRequestHandler subclass")
        self.handler_class = handler_class
        self.server = server
        self.attributes = attributes

    def __call__(self, conn: Socket, peer: Any) -> None:
        """Serve one connection, as socketserver's ``finish_request`` does."""
        self.handler_class(conn, peer, ServerView(self, conn))

    def __repr__(self) -> str:
        return f"RequestHandler({self.handler_class!r})"


class ServerView:
    """What a handler class sees as ``self.server``, made for each connection.

    Attributes:
        server_address: the server's address (``getsockname()`` of the connection:
            the address the client reached, with the listener's port).
        server_port: its port; ``server_name``: its name as ``http.server`` gives it
            (``socket.getfqdn``, looked up only if read).
        address_family, socket_type: the connection's, as a TCPServer has them.
        RequestHandlerClass: the handler class.
        socket: None: the listening socket stays with forkserve (a connection's
            process closes it), so ``server_address`` is what tells the address.
        timeout: None, as socketserver's default (``handle_request`` only).

    Anything else is looked up on the ``server`` object given to ``RequestHandler``,
    then in ``SERVER_DEFAULTS``.
    """

    socket = None
    timeout = None

    def __init__(self, owner: RequestHandler, conn: Socket) -> None:
        address = conn.getsockname()
        self.server_address = address
        self.server_port = address[1] if isinstance(address, tuple) else 0
        self.address_family = conn.family
        self.socket_type = conn.type
        self.RequestHandlerClass = owner.handler_class  # socketserver's name
        self._owner = owner
        self.__dict__.update(owner.attributes)

    def __getattr__(self, name: str) -> Any:
        if name == "server_name":  # http.server's HTTPServer.server_bind: getfqdn(host)
            import socket

            host = self.server_address[0] if isinstance(self.server_address, tuple) else ""
            self.server_name = socket.getfqdn(host)
            return self.server_name
        server = self._owner.server
        if server is not None and not name.startswith("__"):
            try:
                return getattr(server, name)
            except AttributeError:
                pass
        if name in SERVER_DEFAULTS:
            return SERVER_DEFAULTS[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def handle_error(self, request: object, client_address: Any) -> None:
        """What socketserver's ``handle_error`` does: the traceback of the exception
        being handled, on standard error (the log), control characters escaped."""
        from forkserve.child.handler import report_exception

        report_exception(None)


def request_handler_class(obj: object) -> type | None:
    """The ``BaseRequestHandler`` subclass ``obj`` is or makes (a ``functools.partial``
    of one), else None. Imports nothing: a subclass exists only once socketserver
    was imported by whoever defined it."""
    socketserver = sys.modules.get("socketserver")
    if socketserver is None:
        return None
    target = getattr(obj, "func", obj) if type(obj).__name__ == "partial" else obj
    if isinstance(target, type) and issubclass(target, socketserver.BaseRequestHandler):
        return target
    return None


def handler_for(obj: Callable[..., object], name: str) -> Handler:
    """``obj`` as forkserve calls it: a request handler class wrapped in a
    ``RequestHandler``; any other class checked; anything else as it is.

    Raises:
        HandlerError: ``obj`` is a socketserver server class, or a class that cannot
            be called as ``cls(conn, peer)``.
    """
    plain: Handler = obj
    if request_handler_class(obj) is not None:
        return RequestHandler(obj)
    if not isinstance(obj, type):
        return plain
    socketserver = sys.modules.get("socketserver")
    if socketserver is not None and issubclass(obj, socketserver.BaseServer):
        raise HandlerError(
            f"handler {name!r} is a server class: name its request handler class "
            "(a socketserver.BaseRequestHandler subclass)"
        )
    import inspect

    try:
        inspect.signature(obj).bind(None, None)
    except TypeError:
        raise HandlerError(
            f"handler {name!r} is a class that is neither a "
            "socketserver.BaseRequestHandler subclass nor callable as cls(conn, peer)"
        ) from None
    except ValueError:  # no signature to read (a class in C): let it be tried
        pass
    return plain
