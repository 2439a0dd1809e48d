"""The WebSocket transport of the load generator, against a real gateway in front of the scripted
engine (bench/scripted_engine.py): pace, acks, pause/resume reach the gateway; the record
holds every token's arrival and the pause, and is scored on the reader's clock."""

from __future__ import annotations

import sys

import pytest

from bench.client import EndpointConfig
from bench.errors import EndpointError
from bench.plan import PlannedRequest
from bench.readers import Reader, reader_qoe
from bench.runner import RunConfig, run_load
from bench.scripted_engine import Script
from core.qoe import QoESpec

QUIET = RunConfig(progress=False)
SPEC = QoESpec(ttft_s=1.0, tds_tok_s=20.0)


@pytest.fixture
async def gateway_url(make_gateway) -> str:
    return (await make_gateway(slack_discovery=False)).url


def ws(url: str, salt: str | None = "bench-1") -> EndpointConfig:
    return EndpointConfig(url, api="chat", transport="ws", cache_salt=salt)


async def test_a_paused_reader_records_its_pause_and_every_token(
        upstream, gateway_url, spy) -> None:
    # 60 tokens over ~1.3 s; the reader reads at half the declared pace and hides the tab 0.2 s
    # after its first token for 0.5 s, while the engine is still streaming.
    upstream.script = Script(tokens=[f"w{i} " for i in range(60)], first_delay_s=0.1, gap_s=0.02)
    reader = Reader(SPEC, 10.0, pause_after_s=0.2, pause_s=0.5)
    plan = [PlannedRequest("r0", 0.0, "hello there", 3, 60, SPEC)]
    run = await run_load(plan, ws(gateway_url), QUIET, readers={"r0": reader})
    (rec,) = run.records
    assert rec.ok, rec.error
    assert rec.num_tokens == 60 == rec.usage_completion_tokens and rec.finish_reason == "stop"
    assert rec.token_times_s == sorted(rec.token_times_s) and rec.ttft_s >= 0.1
    assert rec.read_tds_tok_s == 10.0
    (pause,) = rec.pauses_s
    assert rec.ttft_s + 0.2 <= pause[0] + 1e-3 < rec.token_times_s[-1]  # while it still streamed
    assert pause[1] - pause[0] >= 0.5 - 1e-3
    assert rec.qoe == reader_qoe(rec.token_times_s, QoESpec(1.0, 10.0), rec.pauses_s)
    assert run.meta["transport"] == "ws" and run.meta["endpoint"].endswith("/v1/stream")
    # What reached the gateway: the reader's pace, acks of what was shown, pause then resume.
    names = [name for _, name, _ in spy]
    assert names.count("set_pace") == 1 and ("set_pace", 10.0) in [(n, a) for _, n, a in spy]
    assert names.count("pause") == 1 and names.count("resume") == 1
    assert names.index("pause") < names.index("resume")
    acks = [a for _, name, a in spy if name == "ack"]
    assert acks and acks == sorted(acks) and all(0 < a <= 60 for a in acks)
    assert upstream.records[0].finished and not upstream.records[0].cancelled
    # The engine request: forced length (ignore_eos in extra_body), the declared spec.
    body = upstream.records[0].body
    assert body["ignore_eos"] is True and body["cache_salt"] == "bench-1"
    assert body["max_tokens"] == 60 and body["messages"][0]["content"] == "hello there"
    assert body["vllm_xargs"]["andes_tds"] == 20.0 and body["vllm_xargs"]["andes_ttft"] == 1.0


async def test_the_request_ends_with_the_stream_even_while_the_reader_is_away(
    upstream, gateway_url, spy
) -> None:
    upstream.script = Script(tokens=[f"w{i} " for i in range(30)], gap_s=0.02)
    readers = {"away": Reader(SPEC, 20.0, pause_after_s=0.1, pause_s=5.0),
               "late": Reader(SPEC, 20.0, pause_after_s=30.0, pause_s=5.0)}  # fmt: skip
    plan = [PlannedRequest(k, 0.0, "hi", 2, 30, SPEC) for k in readers]
    run = await run_load(plan, ws(gateway_url, salt=None), QUIET, readers=readers)
    away, late = run.records
    assert away.ok and late.ok and away.num_tokens == late.num_tokens == 30
    (pause,) = away.pauses_s  # hidden while the stream ended: the planned return is kept
    assert pause[1] - pause[0] == pytest.approx(5.0)
    # Done when the gateway was, not when the reader came back: the record ends while it is away.
    assert pause[0] < away.end_s < pause[1]
    assert late.pauses_s == []  # the stream was over before that reader would have hidden it
    assert away.read_tds_tok_s == 20.0 and away.qoe == reader_qoe(away.token_times_s, SPEC,
                                                                 away.pauses_s)  # fmt: skip
    names = [name for _, name, _ in spy]
    assert names.count("pause") == 1 and "resume" not in names and "set_pace" not in names
    assert "cache_salt" not in upstream.records[0].body


async def test_engine_errors_are_recorded_and_a_non_gateway_is_refused(
        upstream, gateway_url) -> None:
    upstream.script = Script(status=400, error={"message": "prompt too long"})
    plan = [PlannedRequest("r0", 0.0, "hi", 2, 5, SPEC)]
    run = await run_load(plan, ws(gateway_url), QUIET)
    (rec,) = run.records
    assert rec.error is not None and "prompt too long" in rec.error and rec.num_tokens == 0
    with pytest.raises(EndpointError, match="no Andes gateway WebSocket"):
        await run_load(plan, ws(upstream.url), QUIET)  # the engine itself has no /v1/stream


def test_the_ws_transport_is_chat_only() -> None:
    with pytest.raises(ValueError, match="chat completions only"):
        EndpointConfig("http://127.0.0.1:1", transport="ws")
    assert ws("https://gw.test:8443/v1").ws_url == "wss://gw.test:8443/v1/stream"


async def test_andes_bench_over_the_websocket(upstream, gateway_url, tmp_path) -> None:
    import asyncio
    import json

    upstream.script = Script(tokens=[f"w{i} " for i in range(6)], gap_s=0.01)
    out = tmp_path / "runs.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "andes", "bench", "--url", gateway_url, "--transport", "ws",
        "--workload", "synthetic", "--num-requests", "6", "--rate", "30",
        "--max-output-tokens", "6", "--misdeclared-share", "1", "--pause-share", "0",
        "--json", str(out), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert "readers: 6 not at the declared pace, 0 hide the tab" in stdout.decode()
    (run,) = json.loads(out.read_text())["runs"]
    assert run["meta"]["transport"] == "ws" and run["meta"]["readers"]["misdeclared_share"] == 1
    for rec in run["records"]:
        assert rec["error"] is None and len(rec["token_times_s"]) == 6
        assert rec["read_tds_tok_s"] < rec["spec"]["tds_tok_s"] and rec["pauses_s"] == []
