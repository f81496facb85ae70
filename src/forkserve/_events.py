"""Rendering of log events as text lines or JSON objects (pure: no I/O).

A text line is ``TIMESTAMP EVENT key=value ...``. Values that contain spaces, quotes,
``=`` or anything unprintable are written as JSON strings, so every line splits
unambiguously on spaces and no byte from a peer reaches the log raw.

A JSON line (``--log-format json``) is one object with the same fields:
``{"ts": TIMESTAMP, "event": EVENT, "key": value, ...}``. Whole numbers and booleans
stay JSON numbers and booleans; every other value is the string the text line shows
(``"duration": "0.002s"``, ``"conns": "1/1000"``), so the two formats carry the same
information and a field means the same in both.
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


def json_value(value: object) -> object:
    """A field value as JSON carries it: numbers and booleans as such, the rest as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity: those go as text.
        return round(value, 3) if abs(value) < float("inf") else str(value)
    if isinstance(value, bytes):
        return escape_bytes(value)
    return str(value)


def render_json(
    ts: float, event: str, fields: Mapping[str, object], stamp: Callable[[float], str] | None = None
) -> str:
    """Render one event as a JSON object on one line, without the trailing newline.

    ``ensure_ascii`` keeps the line 7-bit clean: whatever a value holds, the line has
    no control character and no raw byte from a peer.
    """
    import json  # only when JSON logs were chosen: the parent stays lean otherwise

    record: dict[str, object] = {"ts": (stamp or format_timestamp)(ts), "event": event}
    for key, value in fields.items():
        record[key] = json_value(value)
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"))
