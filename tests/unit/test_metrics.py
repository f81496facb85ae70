"""The metrics registry and the endpoint's HTTP answers (pure)."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forkserve.core.metrics import (
    MAX_REQUEST,
    Metrics,
    answer,
    outcome,
    rejection_reasons,
    request_complete,
)
from tests.support import find_promtool


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_counters_and_gauges_render() -> None:
    metrics = Metrics("prefork")
    metrics.accepted()
    metrics.accepted()
    metrics.rejected("denied")
    metrics.exited(0, None)
    metrics.exited(None, 9)
    metrics.ended(0.02)
    metrics.forked(0.001)
    metrics.operation("reload-ok")
    got = samples(metrics.render({"active": 1, "limit": 64, "workers": {"busy": 1, "idle": 2}}))
    assert got["forkserve_connections_accepted_total", ()] == 2
    assert got["forkserve_connections_rejected_total", (("reason", "denied"),)] == 1
    assert got["forkserve_connections_rejected_total", (("reason", "dropped"),)] == 0
    assert got["forkserve_children_exited_total", (("outcome", "ok"),)] == 1
    assert got["forkserve_children_exited_total", (("outcome", "signal"),)] == 1
    assert got["forkserve_children_exited_total", (("outcome", "error"),)] == 0
    assert got["forkserve_connection_duration_seconds_count", ()] == 1
    assert got["forkserve_accept_to_fork_seconds_bucket", (("le", "0.001"),)] == 1
    assert got["forkserve_connections_active", ()] == 1
    assert got["forkserve_connections_limit", ()] == 64
    assert got["forkserve_workers", (("state", "idle"),)] == 2
    assert got["forkserve_operations_total", (("operation", "reload-ok"),)] == 1
    assert not [name for name, _ in got if name.endswith("_created")]


def busy_prefork() -> bytes:
    """Every family, with a sample of each kind counted."""
    metrics = Metrics("prefork")
    metrics.accepted()
    metrics.rejected("per-ip")
    metrics.exited(1, None)
    metrics.ended(0.5)
    metrics.forked(0.0002)
    metrics.operation("reload-failed")
    return metrics.render({"active": 2, "limit": 8, "workers": {"busy": 2, "idle": 1}})


def test_each_family_is_declared_by_its_samples_names() -> None:
    """What promtool and the 0.0.4 parsers need (prometheus_client's generate_latest
    writes the same): ``# TYPE x_total counter`` for ``x_total`` samples, so a counter
    family is never parsed empty beside an untyped family of its samples."""
    text = busy_prefork()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    assert {name: f.type for name, f in families.items()} == {
        "forkserve_connections_accepted": "counter",
        "forkserve_connections_rejected": "counter",
        "forkserve_children_exited": "counter",
        "forkserve_connection_duration_seconds": "histogram",
        "forkserve_accept_to_fork_seconds": "histogram",
        "forkserve_connections_active": "gauge",
        "forkserve_connections_limit": "gauge",
        "forkserve_operations": "counter",
        "forkserve_workers": "gauge",
    }
    for family in families.values():
        assert family.samples, f"{family.name} has no samples"
    declared = {}
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            declared[name] = kind
            assert (kind == "counter") == name.endswith("_total"), line
    suffixes = ("_bucket", "_sum", "_count")
    for line in text.decode().splitlines():
        if not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            base = next((name[: -len(s)] for s in suffixes if name.endswith(s)), name)
            assert name in declared or declared.get(base) == "histogram", line


def test_promtool_finds_nothing_to_lint() -> None:
    tool = find_promtool()
    if tool is None:
        pytest.skip("promtool is not installed (make test fetches it: see the Makefile)")
    lint = [tool, "check", "metrics"]
    result = subprocess.run(
        lint, input=busy_prefork(), capture_output=True, timeout=30, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_rejection_reasons_follow_the_settings() -> None:
    assert rejection_reasons(False, False, False) == ("fork-failed", "dropped")
    assert rejection_reasons(True, True, True) == (
        "deny",
        "per-ip",
        "rate",
        "fork-failed",
        "dropped",
    )
    assert rejection_reasons(False, True, False) == ("per-ip", "fork-failed", "dropped")


def test_expected_reasons_start_at_zero_and_keep_their_counts() -> None:
    metrics = Metrics("fork")
    metrics.rejected("per-ip", 3)
    metrics.expect_rejections(rejection_reasons(True, True, False))
    got = samples(metrics.render({"active": 0, "limit": 1}))
    rejected = {
        labels[0][1]: value
        for (name, labels), value in got.items()
        if name == "forkserve_connections_rejected_total"
    }
    assert rejected == {"per-ip": 3, "deny": 0, "fork-failed": 0, "dropped": 0}
    operations = {
        labels[0][1]: value
        for (name, labels), value in got.items()
        if name == "forkserve_operations_total"
    }
    assert operations == {"reload-ok": 0, "reload-failed": 0, "upgrade-failed": 0}


def test_label_values_are_escaped() -> None:
    metrics = Metrics("fork")
    metrics.rejected('odd "reason"\\ with\nnewline')
    got = samples(metrics.render({"active": 0, "limit": 1}))
    key = ("forkserve_connections_rejected_total", (("reason", 'odd "reason"\\ with\nnewline'),))
    assert got[key] == 1


def test_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics("fork")
    for value in (0.0005, 0.003, 0.003, 7200):
        metrics.ended(value)
    got = samples(metrics.render({"active": 0, "limit": 1}))
    name = "forkserve_connection_duration_seconds"
    assert got[name + "_bucket", (("le", "0.001"),)] == 1
    assert got[name + "_bucket", (("le", "0.005"),)] == 3
    assert got[name + "_bucket", (("le", "3600"),)] == 3
    assert got[name + "_bucket", (("le", "+Inf"),)] == 4
    assert got[name + "_count", ()] == 4
    assert got[name + "_sum", ()] == 0.0005 + 0.006 + 7200


def test_outcome() -> None:
    assert outcome(0, None) == "ok"
    assert outcome(1, None) == "error"
    assert outcome(None, 9) == "signal"


def test_request_complete() -> None:
    assert not request_complete(b"GET /metrics HTTP/1.0\r\n")
    assert request_complete(b"GET /metrics HTTP/1.0\r\n\r\n")
    assert request_complete(b"GET /metrics HTTP/1.0\n\n")


def ask(request: bytes) -> bytes:
    return answer(request, lambda: b"m 1\n", lambda: (503, b"stopping\n"))


def test_answers() -> None:
    assert ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 200 OK\r\n")
    assert ask(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nm 1\n")
    assert ask(b"HEAD /metrics HTTP/1.0\r\n\r\n").endswith(b"Connection: close\r\n\r\n")
    assert ask(b"GET /healthz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503 ")
    assert ask(b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert ask(b"POST /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 405 ")
    assert ask(b"\x16\x03\x01 garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert ask(b"GET /metrics\r\n\r\n").startswith(b"HTTP/1.0 400 ")
    assert ask(b"G" * (MAX_REQUEST + 1)).startswith(b"HTTP/1.0 431 ")


def test_content_length_matches_body() -> None:
    head, _, body = ask(b"GET /metrics HTTP/1.0\r\n\r\n").partition(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(body) in head + b"\r\n"
