"""Plans (what is sent, when) and the SSE parser."""

from __future__ import annotations

import json

import pytest

from bench.plan import PlanConfig, build_plan, filler_prompt, load_prompt_texts
from core.qoe import QoESpec
from engine.sim.arrivals import ArrivalSpec
from engine.sim.workload import CHARS_PER_TOKEN, TraceRequest, load_workload


def workload(n: int = 3) -> list[TraceRequest]:
    return [TraceRequest(f"w{i}", 10 + i, 100 * (i + 1), QoESpec(1.0, 4.0)) for i in range(n)]


def test_plan_caps_lengths_scales_pace_and_keeps_ttft() -> None:
    cfg = PlanConfig(ArrivalSpec(rate_rps=2.0), num_requests=3, tds_scale=0.5,
                     max_output_tokens=150, max_prompt_tokens=4)  # fmt: skip
    plan = build_plan(workload(), cfg, {"w0": "x" * 1000})
    assert [p.max_tokens for p in plan] == [100, 150, 150]
    assert all(p.spec == QoESpec(1.0, 2.0) for p in plan)
    assert plan[0].prompt == "x" * int(4 * CHARS_PER_TOKEN) and plan[0].prompt_tokens == 4
    assert plan[1].prompt  # no text for w1: filler of about its length
    assert plan[1].to_trace_request() == TraceRequest("w1", plan[1].prompt_tokens, 150,
                                                      QoESpec(1.0, 2.0))  # fmt: skip


def test_same_seed_same_arrivals_and_rates_only_compress_time() -> None:
    slow = build_plan(workload(), PlanConfig(ArrivalSpec(rate_rps=1.0), num_requests=5, seed=7))
    again = build_plan(workload(), PlanConfig(ArrivalSpec(rate_rps=1.0), num_requests=5, seed=7))
    fast = build_plan(workload(), PlanConfig(ArrivalSpec(rate_rps=2.0), num_requests=5, seed=7))
    assert slow == again
    assert [f.at_s for f in fast] == pytest.approx([s.at_s / 2 for s in slow])
    assert [s.req_id for s in slow] == ["w0", "w1", "w2", "w0#1", "w1#1"]  # cyclic, unique ids


def test_duration_keeps_only_requests_due_before_it() -> None:
    plan = build_plan(workload(), PlanConfig(ArrivalSpec(rate_rps=20.0), duration_s=5.0, skip=1))
    assert plan and all(p.at_s < 5.0 for p in plan)
    assert 50 < len(plan) < 200  # ~100 expected
    assert plan[0].req_id == "w1"


def test_bad_plan_config_quotes_the_value() -> None:
    with pytest.raises(ValueError, match="-1"):
        PlanConfig(ArrivalSpec(), num_requests=10, tds_scale=-1)
    with pytest.raises(ValueError, match="num_requests or duration_s"):
        PlanConfig(ArrivalSpec())


def test_prompt_texts_from_both_file_formats(tmp_path) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([
        {"id": "a", "prompt": "hello there", "output_len": 5, "ttft": 1, "latency": 0.25},
        {"prompt": "no id", "output_len": 3},
    ]))  # fmt: skip
    share = tmp_path / "share.json"
    share.write_text(json.dumps([
        {"id": "c", "conversations": [{"from": "human", "value": "hi"},
                                      {"from": "gpt", "value": "hello"}]},
    ]))  # fmt: skip
    assert load_prompt_texts(trace) == {"a": "hello there", "req-1": "no id"}
    assert load_prompt_texts(share) == {"c": "hi"}
    # Ids line up with the simulator's loader.
    assert {r.req_id for r in load_workload(trace)} == {"a", "req-1"}


def test_filler_prompt_has_about_the_requested_length() -> None:
    text = filler_prompt(50, seed=3)
    assert 50 * CHARS_PER_TOKEN <= len(text) < 50 * CHARS_PER_TOKEN + 20
    assert filler_prompt(50, seed=3) == text != filler_prompt(50, seed=4)
