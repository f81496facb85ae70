"""Errno names for the logs: ``error=EMFILE``, never strerror's prose (pure).

Every log line that reports a failed system call names the errno the same way, in
fork mode and in prefork (issue 13: one errno naming).
"""

from __future__ import annotations

import errno


def errno_name(number: int | None, unknown: str | None = None) -> str:
    """The symbolic name of an errno (``EMFILE`` for 24).

    Args:
        number: ``OSError.errno``; None for an OSError raised without one.
        unknown: what to say when the number has no name; by default the number
            itself as text (``"None"`` when there is none).
    """
    name = errno.errorcode.get(number or 0)
    if name is not None:
        return name
    return str(number) if unknown is None else unknown
