"""The gateway in front of real engines it does not control: llama.cpp's server (through
llama-cpp-python) and stock vLLM (no Andes plug-in), both on the bundled model, both started once
per session (tests/engine_fixture.py). The same tests run against each: pacing and usage,
admission (the gateway's queue), park/resume with a seam check, a client disconnect, and an
upstream killed mid-stream; llama.cpp (cheap to start) also carries the two-replica routing and
health test.

Seam checks use a counting prompt ("1, 2, 3, …,"): its greedy continuation has no near-ties, so a
token lost, repeated or re-worded at the seam shows, while the engines' floating-point noise
between prefill and decode (which can flip a near-tie of an ordinary prompt even between two
unparked runs) does not.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import start
from gateway.config import GatewayConfig

pytestmark = [pytest.mark.engine, pytest.mark.slow]

COUNT_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
CHAT = [{"role": "user", "content": "Count from 1 to 40, separated by commas."}]


@dataclass
class Engine:
    kind: str  # "llama_cpp" | "stock_vllm"
    base_url: str
    model: str
    process: Any

    def requests_seen(self) -> int:
        """How many completion requests reached the engine (its own record of them)."""
        if self.kind == "llama_cpp":
            return len(re.findall(r'"POST /v1/(chat/)?completions', self.process.log_text()))
        return int(_metric_sum(_get_text(self.base_url + "/metrics"), "vllm:request_success_total")
                   + _metric_sum(_get_text(self.base_url + "/metrics"), "vllm:num_requests_running")
                   + _metric_sum(_get_text(self.base_url + "/metrics"),
                                 "vllm:num_requests_waiting"))


def _get_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def _metric_sum(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(params=["llama_cpp", "stock_vllm"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "llama_cpp":
        proc = request.getfixturevalue("llama_process")
        return Engine("llama_cpp", proc.base_url, proc.model_path, proc)
    proc = request.getfixturevalue("stock_vllm_process")
    if proc.pid is None:
        pytest.skip("the stock vLLM engine was stopped by an earlier test")
    return Engine("stock_vllm", proc.base_url, "smollm2-135m-instruct", proc)


@pytest.fixture
async def make_gateway() -> AsyncIterator[Any]:
    runners: list[Any] = []

    async def make(*upstreams: str, **overrides: Any) -> str:
        fields = {"upstreams": upstreams, "port": 0, "shutdown_grace_s": 1.0,
                  "slack_discovery": False, "tds_tok_s": 20.0, **overrides}
        runner, port = await start(GatewayConfig(**fields), "127.0.0.1", 0)
        runners.append(runner)
        url = f"http://127.0.0.1:{port}"
        if fields.get("parking", "auto") != "off":
            await _wait_probed(url)
        return url

    yield make
    for runner in runners:
        await runner.cleanup()


async def _wait_probed(url: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Until every upstream's start-up probe has answered (a bounded wait)."""
    async def loop() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(url + "/health") as resp:
                    ups = (await resp.json())["upstreams"]
                if all(u.get("probe", "not probed") != "not probed" for u in ups):
                    return ups
                await asyncio.sleep(0.2)
    return await asyncio.wait_for(loop(), timeout_s)


async def _sse(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
               events: list[dict[str, Any]], max_events: int | None = None,
               ids: list[str] | None = None) -> None:
    """POST and collect the stream's JSON events (until [DONE], or ``max_events`` then leave)."""
    async with session.post(url, json=dict(body, stream=True)) as resp:
        assert resp.status == 200, await resp.text()
        if ids is not None:
            ids.append(resp.headers["X-Andes-Stream-Id"])
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                if not raw.startswith(b"data: "):
                    continue
                data = raw[6:]
                if data == b"[DONE]":
                    return
                events.append(json.loads(data))
                if max_events is not None and len(events) >= max_events:
                    return


def _texts(events: list[dict[str, Any]]) -> int:
    """Events that carried text (the engine has answered; the gateway's role chunk has none)."""
    return sum(1 for e in events for c in e.get("choices") or []
               if c.get("text") or (c.get("delta") or {}).get("content"))


async def _ack(s: aiohttp.ClientSession, url: str, stream_id: str, paused: bool) -> None:
    async with s.post(f"{url}/v1/streams/{stream_id}/ack", json={"paused": paused}) as resp:
        assert resp.status == 204, await resp.text()


def _text(events: list[dict[str, Any]]) -> str:
    out = []
    for e in events:
        for c in e.get("choices") or []:
            out.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
    return "".join(out)


async def _direct(engine: Engine, body: dict[str, Any]) -> str:
    """The same request straight to the engine, unparked: the reference."""
    async with aiohttp.ClientSession() as s, s.post(
            engine.base_url + "/v1/completions", json=dict(body, model=engine.model)) as resp:
        data = await resp.json()
    return str(data["choices"][0]["text"])


async def _wait_for(predicate: Any, timeout_s: float = 30.0) -> None:
    async def loop() -> None:
        while not await predicate():
            await asyncio.sleep(0.1)
    await asyncio.wait_for(loop(), timeout_s)


# -- the tests --


async def test_paced_stream_reports_usage_and_qoe(engine: Engine, make_gateway: Any) -> None:
    from openai import AsyncOpenAI

    url = await make_gateway(engine.base_url, model_aliases=(f"smollm2={engine.model}",))
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    models = [m.id for m in (await client.models.list()).data]
    assert "smollm2" in models and engine.model not in models
    stream = await client.chat.completions.create(
        model="smollm2", messages=CHAT, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"qoe": {"tds": 30}})
    pieces, usage, andes = [], None, None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
        extra = getattr(chunk, "model_extra", None) or {}
        andes = extra.get("andes", andes)
    await client.close()
    assert len(pieces) > 2, "the paced text came in more than one burst"
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert andes is not None and 0.0 < andes["qoe"] <= 1.0
    if engine.kind == "llama_cpp":  # it streams no usage: the gateway's counts, labelled
        assert andes["usage_source"]["completion_tokens"] == "counted"
        assert usage.completion_tokens == andes["tokens"]  # one per delta the engine sent


async def test_admission_queues_refuses_and_a_queued_disconnect_reaches_nothing(
        engine: Engine, make_gateway: Any) -> None:
    url = await make_gateway(engine.base_url, max_upstream_streams=1, queue_max=1,
                             parking="off")
    body = {"model": engine.model, "prompt": COUNT_PROMPT, "max_tokens": 60, "temperature": 0,
            "qoe": {"tds": 15}}
    before = engine.requests_seen()
    async with aiohttp.ClientSession() as s:
        first: list[dict[str, Any]] = []
        running = asyncio.create_task(_sse(s, url + "/v1/completions", body, first))
        await _wait_for(lambda: _has(first), 60)
        queued = asyncio.create_task(_sse(s, url + "/v1/completions", body, []))
        await _wait_for(lambda: _queue_length(s, url, 1), 30)
        async with s.post(url + "/v1/completions", json=dict(body, stream=True)) as resp:
            assert resp.status == 429
            err = (await resp.json())["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
        queued.cancel()  # the client leaves while queued
        with pytest.raises(asyncio.CancelledError):
            await queued
        await _wait_for(lambda: _queue_length(s, url, 0), 30)
        await asyncio.wait_for(running, 120)
    assert _text(first).strip()
    assert engine.requests_seen() - before == 1, "only the admitted request reached the engine"


async def _has(events: list[Any]) -> bool:
    return bool(events)


async def _queue_length(s: aiohttp.ClientSession, url: str, want: int) -> bool:
    async with s.get(url + "/metrics") as resp:
        text = await resp.text()
    return _metric_sum(text, "andes_gateway_queue_length") == want


async def _buffered(s: aiohttp.ClientSession, url: str, at_least: float) -> bool:
    async with s.get(url + "/metrics") as resp:
        return _metric_sum(await resp.text(), "andes_gateway_buffered_tokens") >= at_least


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
async def test_park_and_resume_is_seamless(engine: Engine, make_gateway: Any,
                                           endpoint: str) -> None:
    if endpoint == "chat" and engine.kind == "llama_cpp":
        pytest.skip("llama-cpp-python exposes neither token ids nor its chat template: chat "
                    "streams are not parked there (docs/continuation.md)")
    # A 2 s horizon: long enough that a newcomer's first token, even on a busy machine, falls
    # inside it (else serving it now gains nothing the valuation can see, and it waits).
    # llama-cpp-python's text continuation is parked only when asked for (--parking text).
    parking = "text" if engine.kind == "llama_cpp" else "auto"
    url = await make_gateway(engine.base_url, max_upstream_streams=1, park_min_slack_s=1.0,
                             park_min_run_s=0.2, sched_horizon_s=2.0, parking=parking)
    ups = await _wait_probed(url)
    assert ups[0]["continuation"] == ("text" if engine.kind == "llama_cpp" else "token_ids"), ups
    if endpoint == "completions":
        long = {"model": engine.model, "prompt": COUNT_PROMPT, "max_tokens": 60,
                "temperature": 0}
        if engine.kind == "llama_cpp":
            long["repeat_penalty"] = 1.0  # parked only then (docs/continuation.md)
        reference = await _direct(engine, long)
    else:
        long = {"model": engine.model, "messages": CHAT, "max_tokens": 60, "temperature": 0}
        async with aiohttp.ClientSession() as s, s.post(
                engine.base_url + "/v1/chat/completions", json=long) as resp:
            reference = (await resp.json())["choices"][0]["message"]["content"]
    short = {"model": engine.model, "prompt": "Hello", "max_tokens": 8, "temperature": 0}
    path = "/v1/completions" if endpoint == "completions" else "/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        events: list[dict[str, Any]] = []
        # The reader hides its tab once its stream has started (the SSE ack side channel):
        # its slack is unbounded, whatever the engine's speed, so a newcomer makes it park.
        ids: list[str] = []
        parked = asyncio.create_task(_sse(s, url + path, dict(long, qoe={"tds": 8}), events,
                                          ids=ids))
        await _wait_for(lambda: _async(_texts(events) >= 2), 60)
        await _ack(s, url, ids[0], paused=True)
        other: list[dict[str, Any]] = []
        await asyncio.wait_for(_sse(s, url + "/v1/completions", dict(short, qoe={"tds": 50}),
                                    other), 120)
        await _ack(s, url, ids[0], paused=False)  # back: it reads on, and is resumed
        await asyncio.wait_for(parked, 120)
        async with s.get(url + "/metrics") as resp:
            metrics = await resp.text()
    final = next((e for e in events if e.get("andes")), None)
    assert final is not None, events[-3:]
    other_andes = next((e["andes"] for e in other if e.get("andes")), None)
    diag = [line for line in metrics.splitlines()
            if ("park" in line or "resume" in line or "queue_wait_seconds_count" in line)
            and not line.startswith("#")]
    assert final["andes"].get("parks", 0) >= 1, (final["andes"], other_andes, diag)
    assert _metric_sum(metrics, "andes_gateway_resumes_total") >= 1
    # Every stream sent upstream is counted by the rule that sent it: both first requests and
    # the resume.
    assert _metric_sum(metrics, "andes_gateway_admissions_total") >= 3, diag
    assert _text(events) == reference, "the parked stream reads exactly as the unparked one"
    assert _text(other)
    # A park closes the engine's stream itself: that is no engine failure (counted as one, a few
    # parks in a row took a healthy upstream out of routing and stranded its parked streams).
    (up,) = await _wait_probed(url)
    assert up["healthy"] and up["failures"] == 0, up


async def test_client_disconnect_cancels_the_engine_request(engine: Engine,
                                                            make_gateway: Any) -> None:
    url = await make_gateway(engine.base_url, parking="off")
    body = {"model": engine.model, "prompt": COUNT_PROMPT, "max_tokens": 400, "temperature": 0,
            "qoe": {"tds": 5}}
    before = _finished(engine)
    async with aiohttp.ClientSession() as s:
        await asyncio.wait_for(_sse(s, url + "/v1/completions", body, [], max_events=2), 60)
    # The client left after two chunks; the engine must learn it at once (a bounded wait).
    await _wait_for(lambda: _async(_left(engine, before)), 30)


def _finished(engine: Engine) -> int:
    """Requests the engine completed normally (vLLM) or saw disconnected (llama.cpp's log)."""
    if engine.kind == "llama_cpp":
        return engine.process.log_text().count("Disconnected from client")
    return int(_metric_sum(_get_text(engine.base_url + "/metrics"), "vllm:request_success_total"))


def _left(engine: Engine, before: int) -> bool:
    """The request was aborted: llama.cpp logs the disconnect; vLLM has nothing running and
    counted no request as finished (an aborted one is not a success)."""
    if engine.kind == "llama_cpp":
        return _finished(engine) > before
    text = _get_text(engine.base_url + "/metrics")
    running = _metric_sum(text, "vllm:num_requests_running")
    return running == 0 and _metric_sum(text, "vllm:request_success_total") == before


async def _async(value: bool) -> bool:
    return value


async def test_upstream_killed_mid_stream_gives_a_clear_error(
        engine: Engine, make_gateway: Any, tmp_path: Path) -> None:
    if engine.kind == "llama_cpp":
        from engine.llamacpp.launch import LlamaCppConfig, LlamaCppProcess

        victim = LlamaCppProcess(LlamaCppConfig(port=0), log_path=tmp_path / "victim.log")
        victim.start()
        victim.wait_ready()
        base, model, kill = victim.base_url, victim.model_path, victim.kill
    else:  # the session's stock engine: this is the last test that uses it
        base, model, kill = engine.base_url, engine.model, engine.process.stop
    try:
        url = await make_gateway(base, parking="off", health_interval_s=0.5)
        body = {"model": model, "prompt": COUNT_PROMPT, "max_tokens": 400, "temperature": 0,
                "qoe": {"tds": 5}}
        events: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as s:
            task = asyncio.create_task(_sse(s, url + "/v1/completions", body, events))
            await _wait_for(lambda: _has(events), 60)
            kill()
            await asyncio.wait_for(task, 60)  # the stream ends: no hang
    finally:
        if engine.kind == "llama_cpp":
            victim.stop()
    errors = [e["error"] for e in events if "error" in e]
    assert errors, events[-3:]
    assert errors[0]["type"] == "upstream_error"
    message = errors[0]["message"].lower()
    assert "engine" in message or "upstream" in message, message


async def test_two_replicas_route_around_a_failed_one(llama_process: Any, make_gateway: Any,
                                                      tmp_path: Path) -> None:
    from engine.llamacpp.launch import LlamaCppConfig, LlamaCppProcess

    second = LlamaCppProcess(LlamaCppConfig(port=0), log_path=tmp_path / "second.log")
    second.start()
    second.wait_ready()
    try:
        url = await make_gateway(llama_process.base_url, second.base_url, parking="off",
                                 health_interval_s=0.3)
        body = {"model": llama_process.model_path, "prompt": COUNT_PROMPT, "max_tokens": 300,
                "temperature": 0, "qoe": {"tds": 5}}
        async with aiohttp.ClientSession() as s:
            # Two long streams: QoE routing puts the second on the idle replica.
            a: list[dict[str, Any]] = []
            b: list[dict[str, Any]] = []
            ta = asyncio.create_task(_sse(s, url + "/v1/completions", body, a))
            await _wait_for(lambda: _async(_texts(a) > 0), 60)
            tb = asyncio.create_task(_sse(s, url + "/v1/completions", body, b))
            await _wait_for(lambda: _async(_texts(b) > 0), 60)
            # Routed to the idle replica (its access log may lag the first token: a bounded wait).
            await _wait_for(lambda: _async("POST /v1/completions" in second.log_text()), 30)
            second.kill()
            await asyncio.wait_for(asyncio.gather(ta, tb), 60)
            failed = [ev for ev in (a, b) if any("error" in e for e in ev)]
            assert len(failed) == 1, "the stream on the killed replica failed, the other did not"

            async def state(healthy: bool) -> bool:
                async with s.get(url + "/health") as resp:
                    ups = (await resp.json())["upstreams"]
                return ups[1]["healthy"] is healthy

            await _wait_for(lambda: state(False), 30)
            ok: list[dict[str, Any]] = []
            await asyncio.wait_for(_sse(s, url + "/v1/completions",
                                        dict(body, max_tokens=8, qoe={"tds": 50}), ok), 60)
            assert _text(ok) and not any("error" in e for e in ok)
            second.start()  # back on the same port
            second.wait_ready()
            await _wait_for(lambda: state(True), 30)
    finally:
        second.stop()
