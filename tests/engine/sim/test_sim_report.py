"""Report numbers on a hand-computable run, and the table / JSON / PNG outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.qoe import QoESpec
from engine.sim.report import format_table, plot_qoe_vs_rate, summarize, to_json
from engine.sim.simulator import RequestResult, SimResult

SPEC = QoESpec()


def req(i: int, arrival: float, times: list[float], qoe: float, preemptions: int) -> RequestResult:
    return RequestResult(f"r{i}", arrival, 10, len(times), SPEC, times, preemptions, qoe)


def hand_run() -> SimResult:
    reqs = [
        req(0, 0.0, [1.0, 2.0], 0.2, 0),  # TTFT 1
        req(1, 1.0, [2.0, 3.0, 4.0], 0.5, 1),  # TTFT 1
        req(2, 2.0, [4.0, 6.0], 0.9, 0),  # TTFT 2
        req(3, 3.0, [7.0, 8.0, 9.0, 10.0], 1.0, 3),  # TTFT 4
    ]
    return SimResult(policy="p", profile="prof", requests=reqs, iterations=7)


def test_summary_by_hand() -> None:
    s = summarize(hand_run(), rate_rps=2.0, arrivals="poisson")
    assert s.avg_qoe == pytest.approx(0.65)
    assert s.p10_qoe == pytest.approx(0.2 + 0.3 * (0.5 - 0.2))  # linear interpolation, rank 0.3
    assert s.share_qoe_ge_0_9 == 0.5
    assert s.ttft_mean_s == pytest.approx(2.0)
    assert s.ttft_p50_s == pytest.approx(1.5)
    assert s.ttft_p99_s == pytest.approx(2.0 + 0.97 * 2.0)
    assert s.throughput_tok_s == pytest.approx(11 / 10.0)  # 11 tokens from t=0 to t=10
    assert s.preemptions_per_req == 1.0
    assert (s.policy, s.rate_rps, s.num_requests, s.iterations) == ("p", 2.0, 4, 7)


def test_outputs(tmp_path: Path) -> None:
    a = summarize(hand_run(), rate_rps=2.0)
    b = summarize(hand_run(), rate_rps=4.0)
    table = format_table([a, b])
    assert "avg QoE" in table and "0.650" in table and "50.0%" in table
    md = format_table([a], markdown=True)
    assert md.splitlines()[0].startswith("| policy |") and md.count("\n") == 2
    rows = json.loads(to_json([a, b]))
    assert [r["rate_rps"] for r in rows] == [2.0, 4.0] and rows[0]["avg_qoe"] == pytest.approx(0.65)
    png = plot_qoe_vs_rate([a, b], tmp_path / "sub" / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_rate_becomes_null_in_json() -> None:
    assert json.loads(to_json([summarize(hand_run())]))[0]["rate_rps"] is None
