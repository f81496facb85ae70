"""Prefork mode: the pool's supervisor side and the worker process.

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
