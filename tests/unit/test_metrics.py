"""The metrics registry and the endpoint's HTTP answers (pure)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from forkserve._metrics import MAX_REQUEST, Metrics, answer, outcome, request_complete


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
