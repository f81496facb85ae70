"""How ``forkserve bench`` looks: a rich progress bar on stderr, a rich table at the end.

Imported only by ``cli.bench.run.run``, after the arguments are checked: rich is an optional
dependency (``pip install forkserve[bench]``) and slow to import.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from forkserve._errors import UsageError

if TYPE_CHECKING:
    from forkserve.cli.bench.stats import Report, Tally
    from forkserve.cli.bench.work import Config

UNIT_NAMES = {"rate": "connections", "pingpong": "messages", "bulk": "bytes", "hold": "echoes"}


def _rich() -> None:
    try:
        import rich  # noqa: F401
    except ImportError:
        raise UsageError("forkserve bench needs rich: pip install 'forkserve[bench]'") from None


class LiveProgress:
    """A progress bar for one run, on stderr; does nothing when not ``enabled``.

    Time-based workloads (rate, pingpong) fill the bar with time; bulk with verified
    bytes; hold with verified echoes (two per connection).
    """

    def __init__(self, config: Config, *, enabled: bool) -> None:
        _rich()
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.config = config
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not enabled,
        )
        mode = config.mode
        total: float = {
            "rate": config.duration,
            "pingpong": config.duration,
            "bulk": float(config.nbytes * config.conns),
            "hold": float(2 * config.conns),
        }[mode]
        self.task = self.progress.add_task(
            f"{mode} {config.target}", total=total, status="starting"
        )

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.enabled:
            self.progress.stop()

    def update(self, ops: int, nbytes: int, errors: int, elapsed: float) -> None:
        if not self.enabled:
            return
        mode = self.config.mode
        rate = ops / elapsed if elapsed > 0 else 0.0
        status = f"{ops} {UNIT_NAMES[mode]}"
        if mode in ("rate", "pingpong"):
            status += f", {rate:,.0f}/s"
        elif mode == "bulk":
            status = f"{nbytes / 1e6:,.0f} MB, {nbytes / 1e6 / max(elapsed, 1e-9):,.0f} MB/s"
        if errors:
            status += f", [red]{errors} problems"
        done = {"bulk": float(nbytes), "hold": float(ops)}.get(mode, elapsed)
        self.progress.update(self.task, completed=done, status=status)

    def held(self, tally: Tally) -> None:
        if self.enabled:
            self.progress.update(
                self.task, description=f"hold {self.config.target}: holding {tally.verified_start}"
            )


def report_rows(report: Report, data: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows: what the mode measured, then the time and the problems."""
    unit = UNIT_NAMES[report.mode]
    rows: list[tuple[str, str]] = []
    if report.mode == "hold":
        rows += [
            ("connections", f"{report.connections}"),
            ("established", f"{data['established']}"),
            ("verified at start", f"{data['verified_start']}"),
            ("verified at end", f"{data['verified_end']}"),
            ("held for", f"{report.duration:g} s"),
        ]
    elif report.mode == "bulk":
        rows += [
            ("connections", f"{report.connections}"),
            ("verified", f"{report.tally.verified_bytes:,} bytes"),
            ("throughput", f"{report.mb_per_s:,.1f} MB/s"),
        ]
    else:
        label = "workers" if report.mode == "rate" else "connections"
        rows += [
            (label, f"{report.connections}"),
            ("message size", f"{report.message_size} bytes"),
            (f"verified {unit}", f"{report.tally.ops:,}"),
            (f"{unit}/s", f"{report.rate:,.0f}"),
        ]
        latency = report.latency()
        if latency is not None:
            for key in ("p50", "p90", "p99", "p99.9", "max"):
                rows.append((f"latency {key}", f"{latency[key]:,.1f} µs"))
    rows += [("elapsed", f"{report.elapsed:.2f} s"), ("problems", f"{data['error_count']}")]
    for kind, count in data["errors"].items():
        rows.append((f"  {kind}", f"{count}"))
    return rows


def print_report(report: Report) -> None:
    """The result as a table on stdout, problems listed under it."""
    from rich.console import Console
    from rich.table import Table

    data = report.to_json()
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in report_rows(report, data):
        table.add_row(name, value)
    console = Console(highlight=False)
    console.print(f"[bold]forkserve bench {report.mode} {report.target}", markup=True)
    console.print(table)
    for line in data["problems"]:
        console.print(f"problem: {line}", markup=False)
    if report.exit_code == 0:
        console.print("[green]every byte verified")
