"""``forkserve bench``: the load generator that verifies every byte.

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
