"""Settings: the one table, its parser and config file, the typed settings (values),
reload plans, handler lookup.

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
