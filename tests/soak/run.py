"""``make soak``: every reliability scenario in both process models, full size.

Prints a table and writes it into docs/reliability.md between its soak markers.
Usage: ``python -m tests.soak.run [--fast] [SCENARIO ...]``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

from tests.soak.scenarios import ASYNC_SCENARIOS, FAST, FULL, SCENARIOS, Result

DOC = Path(__file__).parents[2] / "docs" / "reliability.md"
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def table(results: list[Result]) -> str:
    rows = [
        "| scenario | mode | load held | faults injected | bytes sent | bytes verified "
        "| zombies left | fds leaked | result |",
        "|---|---|---|---|--:|--:|--:|--:|---|",
    ]
    for r in results:
        verdict = "pass" if r.ok else "FAIL: " + "; ".join(r.problems)[:300]
        rows.append(
            f"| {r.scenario} | {r.mode} | {r.load} | {r.faults} | {r.sent:,} | {r.verified:,} "
            f"| {r.zombies} | {r.fds_leaked} | {verdict} ({r.seconds:.0f} s) |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fast", action="store_true", help="the make test sizes")
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], default=[])
    args = parser.parse_args()
    size = FAST if args.fast else FULL
    began = time.monotonic()
    results = []
    for name in args.scenarios or list(SCENARIOS):
        modes = ("fork", "prefork", "async") if name in ASYNC_SCENARIOS else ("fork", "prefork")
        for mode in modes:
            start = time.monotonic()
            result = SCENARIOS[name](mode, size)
            result.seconds = time.monotonic() - start
            print(
                f"{result.scenario} {mode}: {'pass' if result.ok else result.problems}",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    text = table(results)
    print(text)
    if not args.fast and not args.scenarios:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = (
            f"Last `make soak`: {stamp}, {time.monotonic() - began:.0f} s, "
            f"{platform.node() and 'this project machine'} (Python {platform.python_version()})."
        )
        doc = DOC.read_text()
        head, _, rest = doc.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{header}\n\n{text}\n{END}{tail}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
