"""Settings: the one table, its parser and config file, reload plans, handler lookup.

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
