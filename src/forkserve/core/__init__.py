"""The pure core: parsers, policies and renderers (no I/O: tests/unit/test_purity.py).

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
