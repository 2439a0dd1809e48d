"""The load generator against a scripted OpenAI-compatible server on loopback."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from bench.client import EndpointConfig
from bench.plan import PlannedRequest
from bench.result import BenchRun
from bench.runner import RunConfig, run_load
from bench.scripted_engine import Script, ScriptedEngine
from core.qoe import QoESpec, qoe

QUIET = RunConfig(progress=False)


def engine(script: Script | Callable[[dict[str, Any]], Script] | None = None) -> ScriptedEngine:
    """The scripted engine as a vLLM serving model "scripted", answering ``max_tokens`` tokens
    unless the script says otherwise."""
    return ScriptedEngine(script or Script(tokens=None), models=("scripted",))


def planned(n: int, gap_s: float = 0.0, tokens: int = 5, spec: QoESpec | None = None):
    spec = spec or QoESpec(ttft_s=1.0, tds_tok_s=10.0)
    return [PlannedRequest(f"r{i}", i * gap_s, f"prompt {i}", 2, tokens, spec) for i in range(n)]


async def test_token_times_are_recorded_and_scored_with_the_qoe_model() -> None:
    # 10 tokens at exactly the reader's pace (20 tok/s) after a 0.5 s wait; the reader expected the
    # first token after 0.2 s, so every token is ~0.3 s late: QoE = 1 / (1 + 2·d·tds/(l-1)).
    spec = QoESpec(ttft_s=0.2, tds_tok_s=20.0)
    async with engine(Script(tokens=None, first_delay_s=0.5, gap_s=0.05)) as server:
        run = await run_load(planned(1, tokens=10, spec=spec), EndpointConfig(server.url), QUIET)
    (rec,) = run.records
    assert rec.ok and rec.num_tokens == 10 and rec.usage_completion_tokens == 10
    assert rec.finish_reason == "length"
    # The client saw each token no earlier than the server wrote it (same clock, due-relative).
    due = run.meta["t0_clock_s"] + rec.due_s
    sent = [t - due for t in server.records[0].token_clock_s]
    assert all(c >= s for c, s in zip(rec.token_times_s, sent, strict=True))
    assert rec.ttft_s >= 0.5
    assert rec.qoe == qoe(rec.token_times_s, spec)
    formula = 1 / (1 + 2 * 0.3 * 20.0 / 9)
    assert rec.qoe == pytest.approx(formula, abs=0.1)  # scheduling jitter only makes it later


async def test_requests_go_out_no_earlier_than_due_and_in_order() -> None:
    plan = planned(4, gap_s=0.15, tokens=2)
    async with engine() as server:
        run = await run_load(plan, EndpointConfig(server.url), QUIET)
    t0 = run.meta["t0_clock_s"]
    assert [r.body["vllm_xargs"]["andes_stream_id"] for r in server.records] == [
        "r0", "r1", "r2", "r3",
    ]  # fmt: skip
    for req, got in zip(plan, server.records, strict=True):
        assert got.received_clock_s >= t0 + req.at_s - 1e-3
    assert all(r.sent_s >= -1e-3 for r in run.records)
    assert run.summary().num_ok == 4 and not run.interrupted


async def test_body_carries_the_spec_length_and_vllm_fields() -> None:
    spec = QoESpec(ttft_s=1.5, tds_tok_s=2.5)
    async with engine() as server:
        await run_load(planned(1, tokens=3, spec=spec),
                       EndpointConfig(server.url, cache_salt="run-1"), QUIET)  # fmt: skip
        plain_endpoint = EndpointConfig(server.url, vllm_extras=False, qoe_field=True)
        await run_load(planned(1, tokens=3, spec=spec), plain_endpoint, QUIET)
    vllm, plain = (r.body for r in server.records)
    assert vllm["max_tokens"] == 3 and vllm["stream"] is True and vllm["ignore_eos"] is True
    assert vllm["vllm_xargs"] == {"andes_ttft": 1.5, "andes_tds": 2.5, "andes_stream_id": "r0"}
    assert vllm["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert vllm["cache_salt"] == "run-1" and vllm["model"] == "scripted"
    assert "ignore_eos" not in plain and "vllm_xargs" not in plain
    assert plain["qoe"] == {"ttft": 1.5, "tds": 2.5}


@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_chunks_of_several_tokens_are_counted_from_continuous_usage(api: str) -> None:
    async with engine(Script(tokens=7, tokens_per_chunk=3)) as server:
        run = await run_load(planned(1, tokens=7), EndpointConfig(server.url, api=api), QUIET)
    (rec,) = run.records
    assert server.records[0].path.endswith(
        "/chat/completions" if api == "chat" else "/completions"
    )
    assert rec.num_tokens == 7 and not rec.token_count_mismatch
    # Tokens of one chunk share its arrival time: 3 + 3 + 1.
    times = rec.token_times_s
    assert times[0] == times[2] and times[3] == times[5] and times[5] <= times[6]


async def test_without_continuous_usage_each_chunk_counts_once_and_mismatch_is_reported() -> None:
    async with engine(Script(tokens=6, tokens_per_chunk=2)) as server:
        run = await run_load(planned(1, tokens=6),
                             EndpointConfig(server.url, vllm_extras=False), QUIET)  # fmt: skip
    (rec,) = run.records
    assert rec.num_tokens == 3 and rec.usage_completion_tokens == 6
    assert run.summary().token_count_mismatches == 1


async def test_server_failures_are_counted_not_raised() -> None:
    scripts = {
        "r0": Script(tokens=None),
        "r1": Script(tokens=None, status=503),
        "r2": Script(tokens=None, error_after=2),
        "r3": Script(tokens=None, drop_after=1),
        "r4": Script(tokens=None),
    }
    async with engine(lambda b: scripts[b["vllm_xargs"]["andes_stream_id"]]) as server:
        run = await run_load(planned(5, tokens=4), EndpointConfig(server.url), QUIET)
    by_id = {r.req_id: r for r in run.records}
    assert by_id["r0"].ok and by_id["r4"].ok
    assert by_id["r1"].error is not None and "503" in by_id["r1"].error
    assert "scripted failure" in by_id["r1"].error
    assert by_id["r2"].error is not None and "scripted error event" in by_id["r2"].error
    assert by_id["r2"].num_tokens == 2  # what arrived before the error is kept and scored
    assert by_id["r3"].error is not None and by_id["r3"].num_tokens == 1
    summary = run.summary()
    assert (summary.num_requests, summary.num_ok, summary.num_errors) == (5, 2, 3)
    assert by_id["r1"].qoe == 0.0


async def test_a_stalled_stream_times_out() -> None:
    async with engine(Script(tokens=None, stall_after=0, stall_s=5.0)) as server:
        endpoint = EndpointConfig(server.url, read_timeout_s=0.2)
        run = await run_load(planned(1), endpoint, QUIET)
    (rec,) = run.records
    assert rec.error is not None and rec.error.startswith("timeout")
    assert rec.num_tokens == 0 and not math.isnan(rec.end_s)


async def test_setting_stop_cancels_and_returns_partial_results() -> None:
    import asyncio

    stop = asyncio.Event()
    plan = planned(3, gap_s=30.0, tokens=1000)
    async with engine(Script(tokens=None, gap_s=0.01)) as server:
        task = asyncio.create_task(run_load(plan, EndpointConfig(server.url), QUIET, stop))

        await server.wait_for(lambda e: e.records and e.records[0].token_clock_s, timeout_s=30)
        stop.set()
        run = await task
    assert run.interrupted
    first, *rest = run.records
    assert first.error == "cancelled" and 0 < first.num_tokens < 1000
    assert all(r.error == "not sent (stopped)" for r in rest)


async def test_concurrency_limit_queues_requests_but_keeps_due_times() -> None:
    async with engine(Script(tokens=None, gap_s=0.02)) as server:
        run = await run_load(planned(3, tokens=5), EndpointConfig(server.url),
                             RunConfig(max_concurrency=1, progress=False))  # fmt: skip
    # One at a time: each starts after the previous one's stream ended.
    got = server.records
    assert got[1].received_clock_s >= got[0].token_clock_s[-1]
    assert got[2].received_clock_s >= got[1].token_clock_s[-1]
    # ...yet every record is timed from its due time (0 for all), so the queued ones look late.
    assert run.records[2].ttft_s > run.records[0].ttft_s


async def test_run_round_trips_through_json(tmp_path) -> None:
    async with engine(Script(tokens=3)) as server:
        run = await run_load(planned(2, tokens=3), EndpointConfig(server.url), QUIET)
    path = tmp_path / "run.json"
    run.save(path)
    back = BenchRun.load(path)
    assert [r.req_id for r in back.records] == ["r0", "r1"]
    assert back.records[0].token_times_s == pytest.approx(run.records[0].token_times_s, abs=1e-6)
    assert back.summary().avg_qoe == pytest.approx(run.summary().avg_qoe, abs=1e-4)


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
@pytest.mark.parametrize("api", ["completions", "chat"])
async def test_event_streams_with_cr_line_endings_are_read(api: str, ending: str) -> None:
    # SSE allows "\r\n" and a lone "\r" as line endings (WHATWG); engines behind some proxies
    # send them. Every token, the usage and [DONE] must come through either way.
    async with engine(Script(tokens=None, gap_s=0.01, line_ending=ending)) as server:
        run = await run_load(planned(1, tokens=6), EndpointConfig(server.url, api=api), QUIET)
    (rec,) = run.records
    assert rec.ok, rec.error
    assert rec.num_tokens == 6 == rec.usage_completion_tokens and rec.finish_reason == "length"
    assert rec.token_times_s == sorted(rec.token_times_s)
