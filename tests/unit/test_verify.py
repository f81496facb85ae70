"""The bench's pure parts: the test stream, problem descriptions, statistics."""

from __future__ import annotations

import argparse
import ast
import pathlib
from array import array

import pytest

from forkserve.cli.bench import run, stats, verify
from forkserve.cli.bench.stats import Report, Tally, exit_code, latency_summary, percentile
from forkserve.cli.bench.verify import BLOCK, Problem, Stream

SRC = pathlib.Path(verify.__file__).parent


@pytest.mark.parametrize("module", ["verify.py", "stats.py"])
def test_pure_modules_import_no_os_facilities(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert not names & {"socket", "os", "time", "signal", "selectors", "subprocess"}


def test_stream_is_deterministic_and_seeded() -> None:
    assert Stream(1).read(0, 1000) == Stream(1).read(0, 1000)
    assert Stream(1).read(0, 1000) != Stream(2).read(0, 1000)
    assert Stream(1).read(0, 1000) != Stream(1).read(BLOCK, 1000)


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 1), (0, BLOCK), (BLOCK - 3, 10), (5, 3 * BLOCK)]
)
def test_pieces_read_and_byte_at_agree(offset: int, length: int) -> None:
    stream = Stream(7)
    data = stream.read(offset, length)
    assert len(data) == length
    assert b"".join(stream.pieces(offset, length)) == data
    assert all(len(piece) <= BLOCK for piece in stream.pieces(offset, length))
    for k in (0, length // 2, length - 1):
        assert stream.byte_at(offset + k) == data[k]
    # Reading in parts gives the same bytes: offsets are absolute.
    assert (
        stream.read(offset, length // 2) + stream.read(offset + length // 2, length - length // 2)
        == data
    )


@pytest.mark.parametrize("bad", [0, 1, BLOCK - 1, BLOCK, 2 * BLOCK + 17])
def test_first_mismatch_finds_a_flipped_byte(bad: int) -> None:
    stream = Stream(3)
    data = bytearray(stream.read(0, 3 * BLOCK))
    assert stream.first_mismatch(0, data) is None
    data[bad] ^= 0x01
    assert stream.first_mismatch(0, data) == bad
    # The same check from an offset inside the stream, one byte at a time.
    assert stream.first_mismatch(bad, data[bad : bad + 1]) == 0
    assert stream.first_mismatch(bad + 1, data[bad + 1 :]) is None


def test_a_lost_byte_shows_right_away() -> None:
    stream = Stream(4)
    data = stream.read(0, 2 * BLOCK)
    lost = data[:1000] + data[1001:]
    found = stream.first_mismatch(0, lost)
    assert found is not None
    assert 1000 <= found < 1010


def test_a_lost_block_shows() -> None:
    stream = Stream(5)
    data = stream.read(0, 3 * BLOCK)
    assert stream.first_mismatch(0, data[:BLOCK] + data[2 * BLOCK :]) is not None


def test_problem_descriptions_name_the_offset() -> None:
    assert verify.mismatch("w0", 5, 0x5A, 0x5B).describe() == (
        "w0: mismatch at offset 5: expected 0x5a, got 0x5b"
    )
    assert (
        "short echo at offset 9: EOF after 9 of 10 bytes"
        in verify.short("w1", 9, 10, "EOF").describe()
    )
    assert "missing EOF at offset 64" in verify.no_eof("c1", 64, 1.0).describe()
    assert "extra bytes at offset 16" in verify.extra_bytes("c2", 16, b"x").describe()
    assert Problem("ECONNREFUSED", "w3.c0", None, "Connection refused").describe() == (
        "w3.c0: ECONNREFUSED: Connection refused"
    )


def test_percentile_nearest_rank() -> None:
    ordered = list(range(1, 101))
    assert percentile(ordered, 50) == 50
    assert percentile(ordered, 99) == 99
    assert percentile(ordered, 99.9) == 100
    assert percentile([7], 50) == 7
    summary = latency_summary([3000, 1000, 2000])
    assert summary is not None
    assert summary["p50"] == 2.0
    assert summary["max"] == 3.0
    assert latency_summary([]) is None


def test_exit_code_ranks_data_problems_first() -> None:
    assert exit_code({}) == 0
    assert exit_code({"ECONNREFUSED": 3}) == stats.EXIT_CONNECTIONS
    assert exit_code({"ECONNREFUSED": 3, "mismatch": 1}) == stats.EXIT_VERIFY
    assert exit_code({"no-eof": 1}) == stats.EXIT_VERIFY


def test_tally_merge_counts_all_keeps_few() -> None:
    total = Tally()
    for i in range(3):
        part = Tally(ops=2, verified_bytes=10, latencies=array("q", [i]))
        for _ in range(stats.MAX_PROBLEMS):
            part.add_problem(Problem("ECONNRESET", f"w{i}"))
        total.merge(part)
    assert total.ops == 6
    assert total.verified_bytes == 30
    assert list(total.latencies) == [0, 1, 2]
    assert total.counts == {"ECONNRESET": 3 * stats.MAX_PROBLEMS}
    assert len(total.problems) == stats.MAX_PROBLEMS


def test_report_json_fields() -> None:
    tally = Tally(ops=10, verified_bytes=640, latencies=array("q", [1000] * 10))
    report = Report("pingpong", "127.0.0.1:9", 2, 64, 0, 1.0, 2.0, tally)
    data = report.to_json()
    assert data["rate"] == 5.0
    assert data["unit"] == "msg"
    assert data["latency_us"]["p99"] == 1.0
    assert data["ok"] is True
    assert data["established"] is None


@pytest.mark.parametrize(
    ("text", "value"), [("64", 64), ("64K", 65536), ("1g", 1 << 30), ("2M", 2 << 20)]
)
def test_byte_count(text: str, value: int) -> None:
    assert run.byte_count(text) == value


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5K", "K", "1T", "١٢"])
def test_byte_count_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        run.byte_count(text)
