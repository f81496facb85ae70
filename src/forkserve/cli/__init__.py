"""The command line: ``forkserve serve``, ``client`` and ``bench``.

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
