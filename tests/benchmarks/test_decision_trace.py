"""benchmarks/decision_trace.py: one summary per load of a decision trace."""

from __future__ import annotations

import json

import pytest

from benchmarks.decision_trace import loads, summary


def test_a_pause_splits_the_loads_and_each_is_summed() -> None:
    lines = [json.dumps({"t": t, "park": 2, "relieved": 1, "park_s": 0.5, "policy_ms": 10.0,
                         "running": 4}) for t in (0.0, 1.0, 2.0)]  # fmt: skip
    lines += ["{cut", json.dumps({"t": 100.0, "park": 0, "policy_ms": 1.0, "running": 1}),
              json.dumps({"t": 100.5, "park": 0, "policy_ms": 1.0, "running": 3})]  # fmt: skip
    first, second = loads(lines, gap_s=20.0)
    s = summary(first)
    assert (s["steps"], s["span_s"], s["parks"], s["relieved"]) == (3, 2.0, 6, 3)
    assert s["park_share"] == pytest.approx(1.5 / 2.0)
    assert s["policy_share"] == pytest.approx(0.03 / 2.0)
    assert s["step_s"] == 1.0
    assert summary(second)["running"] == 2.0


def test_the_steps_tokens_split_into_prefill_and_decode() -> None:
    # A stock engine's trace (StepTraceScheduler) has no policy fields: still summed.
    lines = [json.dumps({"t": 0.0, "tokens": 100, "decode": 0, "preempted": 0}),
             json.dumps({"t": 0.1, "tokens": 40, "decode": 30, "preempted": 1}),
             json.dumps({"t": 0.2, "tokens": 30, "decode": 30, "preempted": 0})]  # fmt: skip
    s = summary(loads(lines)[0])
    assert (s["tokens"], s["prefill"], s["preempted"], s["parks"]) == (170, 110, 1, 0)


def test_two_engines_traces_are_set_side_by_side_by_the_work_they_did(tmp_path) -> None:
    from benchmarks.decision_trace import compare, main, work_s
    from engine.sim.profile import LatencyProfile

    profile = LatencyProfile("p", kv_capacity_blocks=8, overhead_s=0.01, decode_s_per_seq=0.001,
                             kv_read_s_per_token=1e-6, prefill_s_per_token=1e-4)  # fmt: skip
    step = {"t": 0.0, "scheduled": 10, "decode": 10, "tokens": 10, "context": 1000}
    idle = {"t": 0.1, "scheduled": 0, "decode": 0, "tokens": 0, "context": 0}
    # 0.01 + 10 * 0.001 + 1000 * 1e-6 = 0.021 s a decode step; an idle one costs nothing.
    assert work_s([step, idle], profile) == pytest.approx(0.021)
    prefill = {**step, "t": 0.2, "tokens": 110}  # 100 tokens of prefill beside the decodes
    assert work_s([prefill], profile) == pytest.approx(0.031)
    ours = [[step, {**prefill, "policy_ms": 9.0}]]  # the plug-in's time counts for its engine
    theirs = [[step, {**step, "t": 0.2}]]
    rows = compare(ours, theirs, profile)
    # ours: 0.021 + 0.031 + 0.009 = 0.061 s; theirs: 0.042 s
    assert rows[-1].endswith(f"| {0.042 / 0.061:.1%} ({0.042 / 0.061:.1%}) |")
    ours[0][1]["policy_cpu_ms"] = 4.0  # it waited 5 ms of its 9 (the GIL): 0.056 s by CPU
    by_cpu = f"| {0.042 / 0.061:.1%} ({0.042 / 0.056:.1%}) |"
    assert compare(ours, theirs, profile)[-1].endswith(by_cpu)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in ours[0]))
    b.write_text("\n".join(json.dumps(r) for r in theirs[0]))
    profile_path = tmp_path / "p.json"
    profile_path.write_text(profile.to_json())
    assert main([str(a), "--against", str(b), "--profile", str(profile_path)]) == 0
    with pytest.raises(SystemExit):  # a profile that is not one: a usage error, no traceback
        main([str(a), "--against", str(b), "--profile", str(a)])
