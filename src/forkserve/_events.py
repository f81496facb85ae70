"""Rendering of log events as text lines (pure: no I/O).

A log line is ``TIMESTAMP EVENT key=value ...``. Values that contain spaces, quotes,
``=`` or anything unprintable are written as JSON strings, so every line splits
unambiguously on spaces and no byte from a peer reaches the log raw.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

# A peer's bytes are shown at most this long in a log line.
PEER_BYTES_LIMIT = 64


def format_timestamp(ts: float) -> str:
    """Format a Unix time as ISO 8601 UTC with milliseconds: ``2026-11-24T23:57:56.123Z``."""
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
    if isinstance(value, bytes):
        value = escape_bytes(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    import json  # only for the rare value that needs quoting

    return json.dumps(text)


def render_text(ts: float, event: str, fields: Mapping[str, object]) -> str:
    """Render one event as a text line, without the trailing newline."""
    parts = [format_timestamp(ts), event]
    parts.extend(f"{key}={format_value(value)}" for key, value in fields.items())
    return " ".join(parts)
