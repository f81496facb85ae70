"""child/requesthandler.py: which objects are socketserver handler classes, and what
such a class sees as ``self.server``; on loopback sockets, without a server process."""

from __future__ import annotations

import functools
import http.server
import socket
import socketserver
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from forkserve._errors import HandlerError
from forkserve.child.requesthandler import (
    RequestHandler,
    ServerView,
    handler_for,
    request_handler_class,
)


@pytest.fixture
def conn() -> Iterator[socket.socket]:
    """The server's end of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        served, _ = listener.accept()
    with client, served:
        yield served


class Seen(socketserver.BaseRequestHandler):
    """Records what socketserver's protocol gave it, in order."""

    seen: ClassVar[list[Any]] = []

    def setup(self) -> None:
        self.seen.append("setup")

    def handle(self) -> None:
        self.seen.extend(["handle", self.request, self.client_address, self.server])

    def finish(self) -> None:
        self.seen.append("finish")


def plain(conn: socket.socket, peer: Any) -> None:
    """A forkserve handler function."""


class Session:
    """A class forkserve could always call as a handler: ``Session(conn, peer)``."""

    def __init__(self, conn: socket.socket, peer: Any) -> None:
        self.conn = conn


class NoArguments:
    pass


def test_a_class_runs_setup_handle_finish_with_request_peer_and_server(
    conn: socket.socket,
) -> None:
    Seen.seen = []
    RequestHandler(Seen)(conn, ("192.0.2.1", 4000))
    setup, handle, request, peer, server, finish = Seen.seen
    assert (setup, handle, finish) == ("setup", "handle", "finish")
    assert request is conn
    assert peer == ("192.0.2.1", 4000)
    assert isinstance(server, ServerView)
    assert server.server_address == conn.getsockname()
    assert server.server_port == conn.getsockname()[1]
    assert server.RequestHandlerClass is Seen
    assert server.address_family == socket.AF_INET
    assert server.socket is None


def test_server_attributes_come_from_forkserve_then_the_object_then_defaults(
    conn: socket.socket,
) -> None:
    class Own:
        server_port = 1  # forkserve's value wins
        funcs: ClassVar[dict[str, object]] = {"pow": pow}

    view = ServerView(RequestHandler(Seen, server=Own(), logRequests=False), conn)
    assert view.server_port == conn.getsockname()[1]
    assert view.funcs == {"pow": pow}
    assert view.logRequests is False  # a keyword wins over everything
    assert ServerView(RequestHandler(Seen), conn).logRequests is True  # SimpleXMLRPCServer's
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        _ = view.nosuch


def test_server_name_is_looked_up_only_when_read(conn: socket.socket) -> None:
    view = ServerView(RequestHandler(Seen), conn)
    assert "server_name" not in vars(view)
    assert view.server_name == socket.getfqdn("127.0.0.1")
    assert "server_name" in vars(view)


def fail() -> None:
    raise OSError("cannot fork\x1b[2J")


def test_handle_error_writes_the_traceback(
    conn: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    view = ServerView(RequestHandler(Seen), conn)
    try:
        fail()
    except OSError:
        view.handle_error(conn, ("192.0.2.1", 4000))
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "OSError: cannot fork\\x1b[2J" in err  # control characters escaped


def test_which_objects_are_request_handler_classes() -> None:
    simple = http.server.SimpleHTTPRequestHandler
    assert request_handler_class(simple) is simple
    assert request_handler_class(functools.partial(simple, directory="/")) is simple
    assert request_handler_class(Session) is None
    assert request_handler_class(plain) is None


def test_handler_for_wraps_handler_classes_and_leaves_the_rest() -> None:
    wrapped = handler_for(Seen, "m:Seen")
    assert isinstance(wrapped, RequestHandler)
    assert wrapped.handler_class is Seen
    assert handler_for(plain, "m:plain") is plain
    assert handler_for(Session, "m:Session") is Session
    assert handler_for(wrapped, "m:wrapped") is wrapped


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (NoArguments, "'m:x' is a class that is neither a socketserver"),
        (socketserver.TCPServer, "'m:x' is a server class: name its request handler class"),
        (http.server.HTTPServer, "'m:x' is a server class"),
    ],
)
def test_handler_for_refuses_classes_that_are_no_handler(obj: type, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        handler_for(obj, "m:x")


def test_request_handler_refuses_what_is_no_handler_class() -> None:
    with pytest.raises(HandlerError, match=r"Session is not a socketserver\.BaseRequestHandler"):
        RequestHandler(Session)
