"""What runs in a connection's process: the edge (PROXY, TLS), the prelude, Python
handlers, the built-ins, exec and the TLS relay.

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
