"""Rendering of log events as text lines (pure: no I/O).

A log line is ``TIMESTAMP EVENT key=value ...``. Values that contain spaces, quotes,
``=`` or anything unprintable are written as JSON strings, so every line splits
unambiguously on spaces and no byte from a peer reaches the log raw.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping

# A peer's bytes are shown at most this long in a log line.
PEER_BYTES_LIMIT = 64


def format_timestamp(ts: float) -> str:
    """Format a Unix time as ISO 8601 UTC with milliseconds: ``2026-11-24T23:57:56.123Z``."""
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Stamper:
    """``format_timestamp`` for a stream of times, formatting each second only once.

    The forking parent logs two lines per connection; every object its logging
    touches is a page a child later keeps a copy of, so the hot path stays small.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        second = int(ts)
        micros = round((ts - second) * 1_000_000)  # as datetime rounds: half to even
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._second = second
            self._prefix = format_timestamp(second)[:-4]  # without "000Z"
        return f"{self._prefix}{micros // 1000:03d}Z"


def escape_bytes(data: bytes, limit: int = PEER_BYTES_LIMIT) -> str:
    """Escape bytes from a peer for a log line: printable ASCII kept, the rest as ``\\xNN``.

    At most ``limit`` bytes are shown; a longer input ends with ``...(+N bytes)``.
    """
    shown = data[:limit].decode("ascii", "backslashreplace")
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    if len(data) > limit:
        shown += f"...(+{len(data) - limit} bytes)"
    return shown


def format_value(value: object) -> str:
    """Format one field value so that it contains no space and no control character."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is bytes:
        value = escape_bytes(value)  # type: ignore[arg-type]
    elif kind is float:
        return f"{value:.3f}"
    text = str(value)
    if (
        text.isprintable()
        and text
        and " " not in text
        and '"' not in text
        and "=" not in text
        and "\\" not in text
    ):
        return text
    import json  # only for the rare value that needs quoting

    return json.dumps(text)


def render_text(
    ts: float, event: str, fields: Mapping[str, object], stamp: Callable[[float], str] | None = None
) -> str:
    """Render one event as a text line, without the trailing newline.

    ``stamp`` formats the time (a ``Stamper`` in a long-lived logger).
    """
    parts = [(stamp or format_timestamp)(ts), event]
    for key, value in fields.items():
        parts.append(f"{key}={format_value(value)}")
    return " ".join(parts)
