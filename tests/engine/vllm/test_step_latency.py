"""The scheduler's online step-latency model (engine/vllm/step_latency.py): pure Python, no vLLM."""

from __future__ import annotations

import pytest

from engine.vllm.step_latency import StepLatencyModel


def test_the_prior_alone_is_flat() -> None:
    m = StepLatencyModel(token_latency_s=0.03)
    assert m.token_latency_s(1) == pytest.approx(0.03)
    assert m.token_latency_s(64) == pytest.approx(0.03)


def test_a_wrong_prior_level_makes_no_batch_slope() -> None:
    # The engine takes 90 ms a step at batch 16 (and only batch 16 was seen); the prior said 30 ms.
    # No step says smaller batches are faster, so the model must not say so either: a slope made
    # of the prior's error made the latency trigger hold streams for a speed-up that never came.
    m = StepLatencyModel(token_latency_s=0.03)
    for _ in range(20):
        m.observe(0.09, decode_seqs=16, prefill_tokens=0)
    assert m.token_latency_s(4) == pytest.approx(m.token_latency_s(16))
    assert m.token_latency_s(16) == pytest.approx(0.09, rel=0.2)  # data soon dominate the level


def test_the_slope_is_what_the_steps_show() -> None:
    m = StepLatencyModel(token_latency_s=0.03)
    for _ in range(200):
        for batch in (4, 8, 16, 32):
            m.observe(0.02 + 0.002 * batch, decode_seqs=batch, prefill_tokens=0)
    assert m.token_latency_s(8) == pytest.approx(0.036, rel=0.05)
    assert m.token_latency_s(32) == pytest.approx(0.084, rel=0.05)


def test_prefill_cost_is_the_time_beyond_the_decode_line() -> None:
    m = StepLatencyModel(token_latency_s=0.05, prefill_s_per_token=0.0)
    for _ in range(100):
        m.observe(0.05, decode_seqs=8, prefill_tokens=0)
    for _ in range(100):
        m.observe(0.05 + 0.5, decode_seqs=8, prefill_tokens=1000)  # 0.5 ms a prompt token
    assert m.prefill_latency_s(1000) == pytest.approx(0.5, rel=0.05)
