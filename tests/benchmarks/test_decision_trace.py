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
