"""``andes engine`` says on every response that it runs the Andes scheduler, and a gateway in
front of it — on any host, with the slack channel or without — leaves the scheduling to it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import aiohttp
import pytest

from engine.vllm.advert import SchedulerHeader
from engine.vllm.launch import ADVERT_MIDDLEWARE, EngineConfig
from slack.discovery import SCHEDULER_HEADER


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for part in (b"data: 1\n\n", b"data: 2\n\n"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_the_header_is_added_to_the_response_start_and_the_body_is_untouched() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(SchedulerHeader(_app)({"type": "http"}, None, send))
    assert sent[0]["headers"] == [(b"content-type", b"text/event-stream"),
                                  (SCHEDULER_HEADER.lower().encode(), b"andes")]
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]


def test_other_scopes_pass_through_as_they_are() -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(send)

    async def send(message: dict[str, Any]) -> None:  # pragma: no cover - never called
        pass

    asyncio.run(SchedulerHeader(app)({"type": "lifespan"}, None, send))
    assert seen == [send]


def test_andes_engine_adds_the_middleware_and_stock_vllm_does_not() -> None:
    andes = EngineConfig(port=0).command("/model")
    assert andes[andes.index("--middleware") + 1] == ADVERT_MIDDLEWARE
    assert "--middleware" not in EngineConfig(port=0, stock=True).command("/model")


def test_a_traced_stock_engine_is_stock_vllm_and_says_nothing_of_andes() -> None:
    # A decision log on a stock engine: vLLM's own scheduler with its steps traced, no header
    # (a gateway must still take it for an engine that does not schedule by QoE), no ANDES_*
    # policy settings.
    config = EngineConfig(port=0, stock=True, decision_log="/tmp/steps.jsonl")
    cmd = config.command("/model")
    assert cmd[cmd.index("--scheduler-cls") + 1] == "engine.vllm.scheduler.StepTraceAutoScheduler"
    assert "--middleware" not in cmd
    env = config.environment({})
    assert env["ANDES_DECISION_LOG"] == "/tmp/steps.jsonl" and "ANDES_POLICY" not in env
    assert "--scheduler-cls" not in EngineConfig(port=0, stock=True).command("/model")


def _models_header(base: str) -> str | None:
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as resp:
        json.loads(resp.read())
        return resp.headers.get(SCHEDULER_HEADER)


async def _probe_note(url: str, timeout_s: float = 60.0) -> str:
    """The upstream's probe note once the start-up probe has answered."""
    async def poll() -> str:
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(url + "/health") as resp:
                    note = str((await resp.json())["upstreams"][0]["probe"])
                if note != "not probed":
                    return note
                await asyncio.sleep(0.1)
    return await asyncio.wait_for(poll(), timeout_s)


async def _scheduled_by(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as resp:
        return str((await resp.json())["upstreams"][0]["scheduled_by"])


@pytest.mark.engine
async def test_a_gateway_without_the_slack_channel_leaves_andes_engine_to_schedule(
        vllm_engine: str, make_gateway: Any) -> None:  # fmt: skip
    assert _models_header(vllm_engine) == "andes"
    gw = await make_gateway(upstreams=(vllm_engine,), slack_discovery=False)
    # The start-up probe saw it first: it leaves an engine that schedules itself alone.
    assert await _probe_note(gw.url) == ("not probed: the engine runs the Andes scheduler "
                                         "(it schedules)")
    assert await _scheduled_by(gw.url) == "andes engine"
    relay = await make_gateway(upstreams=(vllm_engine,), slack_discovery=False, admission=False)
    assert await _scheduled_by(relay.url) == "andes engine"


@pytest.mark.engine
async def test_in_front_of_stock_vllm_the_gateway_schedules(stock_vllm_process: Any,
                                                           make_gateway: Any) -> None:
    if stock_vllm_process.pid is None:
        pytest.skip("the stock vLLM engine was stopped by an earlier test")
    base = stock_vllm_process.base_url
    assert _models_header(base) is None
    gw = await make_gateway(upstreams=(base,), slack_discovery=False, parking="off")
    assert await _scheduled_by(gw.url) == "gateway"
    relay = await make_gateway(upstreams=(base,), slack_discovery=False, parking="off",
                               admission=False)
    assert await _scheduled_by(relay.url) == "engine"
