"""Sizes in settings: ``--limit-as 512M`` (pure)."""

from __future__ import annotations


def parse_size(text: str) -> int:
    """``--limit-as`` sizes: bytes, or with a binary suffix K, M, G or T (``512M``).

    Raises:
        ValueError: not a positive size.
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, scale = text, 1
    if text[-1:].upper() in units:
        number, scale = text[:-1], units[text[-1].upper()]
    if not number.isdigit() or not number.isascii() or int(number) < 1:
        raise ValueError(f"expected a size like 4096, 512M or 2G, not {text!r}")
    return int(number) * scale


def parse_file_mode(text: str) -> int:
    """A file mode in octal, ``0`` to ``0777`` (``660``, ``0660``). Raises ValueError."""
    if not text or not text.isascii() or not set(text) <= set("01234567") or len(text) > 4:
        raise ValueError(f"expected a file mode in octal, 0 to 0777, not {text!r}")
    return file_mode(int(text, 8))


def file_mode(value: object) -> int:
    """A file mode given as a number (TOML's ``0o660``). Raises ValueError."""
    if not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f"expected a file mode, 0 to 0o777, not {value!r}")
    return value
