"""An XML-RPC service on xmlrpc.server's own request handler, served by forkserve.

    forkserve serve 8000 --handler tests/data/rpc_server.py:handler

The dispatcher holds the registered functions; forkserve's ``RequestHandler`` makes
it what the handler calls ``self.server``.
"""

from __future__ import annotations

import os
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import forkserve


def power(base: Any, exponent: Any) -> Any:
    return base**exponent


def upper(*words: str) -> str:
    return " ".join(words).upper()


rpc = SimpleXMLRPCDispatcher()
rpc.register_introspection_functions()
rpc.register_function(power, "pow")
rpc.register_function(os.getpid, "pid")
rpc.register_function(upper)

handler = forkserve.RequestHandler(SimpleXMLRPCRequestHandler, server=rpc)
