"""Metrics: the counters the parent keeps, and the HTTP answers of ``--metrics`` (pure).

Every number lives in the parent, which sees every accept and every exit; children
never touch it. prometheus_client's multiprocess mode, made for gunicorn's long-lived
workers, keeps a file per process: with a process per connection that is a file per
connection. Gauges (connections open now, workers by state) are read from the
supervisor at scrape time, so they are never stale and cost nothing between scrapes.

The Prometheus text exposition format (version 0.0.4) is written here as
prometheus_client's ``generate_latest`` writes it: a counter's family is named with
its ``_total``, in ``# HELP`` and ``# TYPE`` as in its samples, which is what
``promtool check metrics`` and the 0.0.4 parsers expect (the ``_created`` series it
adds are optional and left out). It is not written by prometheus_client: importing
it brings 120 modules into the supervisor (http.server, ssl, email, typing, inspect,
threading...). When the supervisor forked every connection, that doubled its memory
and the cost of every fork; with the forker it no longer taxes connections, and
measured again (docs/performance.md, "What the supervisor can afford now") it would
still add 10.5 MB to the supervisor, 2.5 MB of PSS to each prefork and async worker,
and 3.3x the time to render a scrape, for the hundred lines here. The tests parse
what is written here with prometheus_client's own parser, and check it with promtool.

The HTTP side is the least a scraper needs: one HTTP/1.0 request per connection,
``GET`` or ``HEAD`` of ``/metrics`` or ``/healthz``; the socket work is in parent.endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A connection's life: from a few milliseconds (one request) to hours (a session).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
# accept(2) to fork(2) returning: under a millisecond for a lean parent on a 2-core
# machine; growing parent memory or an overloaded machine shows here first.
FORK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1)

# Why a connection was closed unserved (``forkserve_connections_rejected_total``):
# fork(2) failed for it; or it was still queued when the grace period ran out. These
# can happen to any server; the others only with the setting that decides them (see
# ``rejection_reasons``).
REJECT_REASONS = ("fork-failed", "dropped")
# What ``forkserve_operations_total`` counts: SIGHUP and SIGUSR2 work on any server.
OPERATIONS = ("reload-ok", "reload-failed", "upgrade-failed")

# Requests longer than this are refused (431): a scraper's request is a few lines.
MAX_REQUEST = 8192


def number(value: float) -> str:
    """A sample value as the exposition format writes it (Go's float formatting)."""
    if value != value:  # noqa: PLR0124 - NaN is the one value not equal to itself
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape(value: str) -> str:
    """A label value as the format quotes it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def rejection_reasons(rules: bool, per_ip: bool, rate: bool) -> tuple[str, ...]:
    """Every ``reason`` a server with these settings can reject a connection for.

    Args:
        rules: access rules are set (``--allow``, ``--deny``, ``--rules``): ``deny``.
        per_ip: ``--per-ip`` is set: ``per-ip``.
        rate: ``--rate`` is set: ``rate``.
    """
    chosen = (("deny", rules), ("per-ip", per_ip), ("rate", rate))
    return (*(reason for reason, on in chosen if on), *REJECT_REASONS)


def labels(pairs: Mapping[str, str]) -> str:
    """``{k="v",...}``, or nothing for no labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}"


class Family:
    """One metric: its samples by label values. ``kind`` is counter, gauge or histogram.

    A counter's ``name`` ends in ``_total``, and the family is declared by that name:
    the samples of a family are its name plus a suffix only for a histogram.
    """

    def __init__(self, name: str, help: str, kind: str, label: str = "") -> None:
        self.name = name
        self.help = help
        self.kind = kind
        self.label = label  # the one label name, or "" for none
        self.values: dict[str, float] = {}

    def inc(self, key: str = "", by: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + by

    def set(self, value: float, key: str = "") -> None:
        self.values[key] = value

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for key, value in self.values.items():
            pairs = {self.label: key} if self.label else {}
            yield f"{self.name}{labels(pairs)} {number(value)}"


class Histogram(Family):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help, "histogram")
        self.bounds = (*buckets, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                return

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            yield f'{self.name}_bucket{{le="{number(bound)}"}} {total}'
        yield f"{self.name}_sum {number(self.sum)}"
        yield f"{self.name}_count {total}"


def outcome(exit_code: int | None, signal_number: int | None) -> str:
    """How a child ended, for the ``outcome`` label: ``ok``, ``error`` or ``signal``."""
    if signal_number is not None:
        return "signal"
    return "ok" if exit_code == 0 else "error"


def gauges() -> tuple[Family, Family, Family]:
    """The gauges: connections active, the limit, prefork workers by state."""
    return (
        Family("forkserve_connections_active", "Connections being served now.", "gauge"),
        Family("forkserve_connections_limit", "Connections served at once, at most.", "gauge"),
        Family("forkserve_workers", "Prefork workers, by state.", "gauge", "state"),
    )


class Metrics:
    """The parent's counters, histograms and gauges.

    Args:
        mode: "fork" or "prefork"; prefork also exports workers by state.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.accepted_total = Family(
            "forkserve_connections_accepted_total", "Connections accepted.", "counter"
        )
        self.rejected_total = Family(
            "forkserve_connections_rejected_total",
            "Connections closed without being served, by reason.",
            "counter",
            "reason",
        )
        self.exited_total = Family(
            "forkserve_children_exited_total",
            "Child processes reaped (connection children; prefork: workers), by outcome.",
            "counter",
            "outcome",
        )
        self.duration = Histogram(
            "forkserve_connection_duration_seconds",
            "How long each connection was served.",
            DURATION_BUCKETS,
        )
        self.fork_time = Histogram(
            "forkserve_accept_to_fork_seconds",
            "From the parent taking a connection to fork(2) returning in the parent.",
            FORK_BUCKETS,
        )
        self.active, self.limit, self.workers = gauges()
        self.operations_total = Family(
            "forkserve_operations_total",
            "SIGHUP reloads and SIGUSR2 upgrades, by operation and result.",
            "counter",
            "operation",
        )
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Known labels start at 0, so a rate() over them works from the first scrape
        (an increase from no series to 1 is invisible to rate() and increase())."""
        self.accepted_total.inc(by=0)
        for label in ("ok", "error", "signal"):
            self.exited_total.inc(label, 0)
        self.expect_rejections(REJECT_REASONS)
        for name in OPERATIONS:
            self.operations_total.inc(name, 0)

    def expect_rejections(self, reasons: tuple[str, ...]) -> None:
        """Export each of ``reasons`` from now on, at 0 until it is counted.

        Called before each scrape with ``rejection_reasons`` of the settings in force,
        so a limit added by a reload shows up at 0 too. A reason once counted stays.
        """
        for reason in reasons:
            self.rejected_total.inc(reason, 0)

    def accepted(self) -> None:
        self.accepted_total.inc()

    def rejected(self, reason: str, count: int = 1) -> None:
        self.rejected_total.inc(reason, count)

    def forked(self, seconds: float) -> None:
        self.fork_time.observe(seconds)

    def ended(self, seconds: float) -> None:
        self.duration.observe(seconds)

    def exited(self, exit_code: int | None, signal_number: int | None) -> None:
        self.exited_total.inc(outcome(exit_code, signal_number))

    def operation(self, name: str) -> None:
        """A reload or upgrade ended: ``reload-ok``, ``reload-failed``, ``upgrade-failed``."""
        self.operations_total.inc(name)

    def render(self, gauges: Mapping[str, object]) -> bytes:
        """The text exposition, with gauges taken from ``gauges`` now.

        Args:
            gauges: ``active`` and ``limit`` (numbers); in prefork mode also
                ``workers``, a mapping of state to count.
        """
        self.active.set(float(gauges["active"]))  # type: ignore[arg-type]
        self.limit.set(float(gauges["limit"]))  # type: ignore[arg-type]
        families: list[Family] = [
            self.accepted_total,
            self.rejected_total,
            self.exited_total,
            self.duration,
            self.fork_time,
            self.active,
            self.limit,
            self.operations_total,
        ]
        workers = gauges.get("workers")
        if isinstance(workers, Mapping):
            for state, count in workers.items():
                self.workers.set(count, state)
            families.append(self.workers)
        text = "\n".join(line for family in families for line in family.lines())
        return (text + "\n").encode("utf-8")


# -- HTTP/1.0, the least a scraper needs -------------------------------------------------

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def request_complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole request head (RFC 9112 section 2.2 allows LF)."""
    return b"\r\n\r\n" in data or b"\n\n" in data


def response(status: int, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    """A whole HTTP/1.0 response; the connection closes after it."""
    head = (
        f"HTTP/1.0 {status} {REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else body)


def answer(
    data: bytes, render: Callable[[], bytes], health: Callable[[], tuple[int, bytes]]
) -> bytes:
    """The response to a request head.

    Args:
        data: what the client sent, with a complete head (see ``request_complete``),
            or longer than MAX_REQUEST.
        render: the metrics exposition, called only for ``/metrics``.
        health: ``(status, body)`` for ``/healthz``.
    """
    text = "text/plain; charset=utf-8"
    if len(data) > MAX_REQUEST:
        return response(431, b"request too large\n", text)
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return response(400, b"bad request\n", text)
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return response(405, b"only GET and HEAD\n", text)
    head_only = method == b"HEAD"
    if target == b"/metrics":
        return response(200, render(), CONTENT_TYPE, head_only)
    if target == b"/healthz":
        status, body = health()
        return response(status, body, text, head_only)
    return response(404, b"not found: try /metrics or /healthz\n", text, head_only)
