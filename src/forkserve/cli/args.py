"""Argument types shared by ``forkserve client`` and ``forkserve bench`` (argparse ``type=``)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, not {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, not {text!r}")
    from forkserve.core.gate import MAX_SECONDS, MAX_SECONDS_TEXT

    if value > MAX_SECONDS:  # poll(2) and socket timeouts wait no longer: see core.gate
        raise argparse.ArgumentTypeError(f"expected at most {MAX_SECONDS_TEXT}, not {text!r}")
    return value
