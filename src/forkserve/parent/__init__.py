"""What runs in the serving parent: the loop, the fork model, admission, listeners,
signals, children, and the operations (metrics, systemd, upgrade, reload).

Internal: the public API is what ``forkserve`` lists in ``__all__``.
"""

__all__: list[str] = []
