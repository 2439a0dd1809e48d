"""benchmarks/engine_grid.py's report: where a run's QoE went (late starts against stalls)."""

from __future__ import annotations

import math

import pytest

from bench.result import BenchRun, RequestRecord
from benchmarks.engine_grid import thirds, thirds_table
from core.qoe import QoESpec

SPEC = QoESpec(ttft_s=1.0, tds_tok_s=4.0)  # a token read every 0.25 s


def _record(due_s: float, token_times_s: list[float]) -> RequestRecord:
    return RequestRecord(f"r{due_s}", due_s, SPEC, 10, len(token_times_s),
                         token_times_s=token_times_s, end_s=token_times_s[-1] if token_times_s
                         else math.nan)  # fmt: skip


def test_a_stall_is_the_readers_wait_after_the_first_token() -> None:
    on_pace = _record(0.0, [0.5 + 0.25 * i for i in range(8)])
    assert on_pace.stall_s == pytest.approx(0.0)
    early = _record(0.0, [0.5] * 8)  # all at once: buffered, read at the pace, no wait
    assert early.stall_s == pytest.approx(0.0)
    # Four tokens on pace, then the fifth 10 s late: the reader waits 10 s, once.
    stalled = _record(0.0, [0.5, 0.75, 1.0, 1.25, 11.5, 11.75, 12.0])
    assert stalled.stall_s == pytest.approx(10.0)
    late_start = _record(0.0, [20.0 + 0.25 * i for i in range(8)])  # late, but then on pace
    assert late_start.stall_s == pytest.approx(0.0) and late_start.ttft_s == 20.0
    assert math.isnan(_record(0.0, []).stall_s)


def test_thirds_split_the_load_by_arrival() -> None:
    records = [
        _record(1.0, [0.5 + 0.25 * i for i in range(8)]),  # first third: on time
        _record(25.0, [30.0 + 0.25 * i for i in range(8)]),  # middle: starts 30 s late
        _record(50.0, [0.5, 0.75, 20.75, 21.0]),  # last: stalls 19.75 s
        _record(61.0, []),  # arrived past the span (a late send) and got nothing: last third
    ]
    run = BenchRun(records, meta={"plan": {"duration_s": 60.0}})
    t = thirds(run)
    assert t["qoe"][0] == pytest.approx(1.0)
    assert t["qoe"][1] < 0.2  # a 30 s late start of 8 tokens
    assert 0.0 < t["qoe"][2] < 0.5  # one stalled stream and one with nothing (0) averaged
    assert t["ttft"] == pytest.approx([0.5, 30.0, 0.5])
    assert t["stall"] == pytest.approx([0.0, 0.0, 19.75])
    table = thirds_table({"default": {("2x", "andes"): run}})
    assert "| default | 2x | andes | 1.000 / " in table
