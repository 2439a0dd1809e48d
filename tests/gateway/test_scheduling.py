"""Gateway scheduling against the scripted engine: queue limits and timeouts, a disconnect while
queued, usage filled in when the engine sends none, model aliases, an interrupted stream."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from bench.scripted_engine import Script
from core.qoe import QoESpec
from gateway.config import GatewayConfig
from gateway.errors import UpstreamError
from gateway.replica import HEALTH_FAILURES
from gateway.upstream import Upstream

BODY = {"model": "test-model", "messages": [{"role": "user", "content": "hi there"}],
        "stream": True, "stream_options": {"include_usage": True}}


async def _events(resp: aiohttp.ClientResponse) -> list[Any]:
    out = []
    async for line in resp.content:
        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


async def test_queue_full_and_queue_timeout_are_429(make_gateway, upstream) -> None:
    gw = await make_gateway(max_upstream_streams=1, queue_max=1, queue_timeout_s=0.5,
                            parking="off")
    upstream.script = Script(tokens=["a "] * 40, gap_s=0.05)
    async with aiohttp.ClientSession() as s:
        first = await s.post(gw.url + "/v1/chat/completions", json=BODY)
        assert first.status == 200
        waiting = asyncio.create_task(s.post(gw.url + "/v1/chat/completions", json=BODY))
        await upstream.wait_for(lambda u: u.requests == 1)
        await asyncio.sleep(0.1)  # let the second reach the queue (it cannot pass: limit 1)
        async with s.post(gw.url + "/v1/chat/completions", json=BODY) as third:
            assert third.status == 429
            assert (await third.json())["error"]["code"] == "queue_full"
        second = await asyncio.wait_for(waiting, 10)
        assert second.status == 429
        assert (await second.json())["error"]["code"] == "queue_timeout"
        await _events(first)
        first.release()
    assert upstream.requests == 1


async def test_a_client_leaving_the_queue_sends_nothing_upstream(make_gateway, upstream) -> None:
    gw = await make_gateway(max_upstream_streams=1, parking="off")
    upstream.script = Script(tokens=["a "] * 20, gap_s=0.05)
    async with aiohttp.ClientSession() as s:
        first = await s.post(gw.url + "/v1/chat/completions", json=BODY)
        queued = asyncio.create_task(s.post(gw.url + "/v1/chat/completions", json=BODY))
        await asyncio.sleep(0.2)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        await _events(first)
        first.release()
        # Nothing else is queued: a later request goes straight through.
        async with s.post(gw.url + "/v1/chat/completions", json=BODY) as later:
            await _events(later)
    assert upstream.requests == 2  # the first and the later one; never the one that left


async def test_usage_is_filled_in_when_the_engine_sends_none(make_gateway, upstream) -> None:
    gw = await make_gateway()
    upstream.script = Script(tokens=["one ", "two ", "three"], usage=False)
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions",
                                                    json=BODY) as resp:
        events = await _events(resp)
    usage = events[-1]["usage"]
    andes = next(e["andes"] for e in events if "andes" in e)
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert andes["usage_source"] == {"completion_tokens": "counted", "prompt_tokens": "estimate"}


async def test_model_aliases(make_gateway, upstream) -> None:
    gw = await make_gateway(model_aliases=("public=test-model",))
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + "/v1/models") as resp:
            ids = [m["id"] for m in (await resp.json())["data"]]
        assert ids == ["public"]
        async with s.post(gw.url + "/v1/chat/completions",
                          json=dict(BODY, model="public")) as resp:
            events = await _events(resp)
    assert events[0]["model"] == "public"
    assert upstream.records[-1].body["model"] == "test-model"


async def test_done_before_a_finish_is_an_error_not_a_short_answer(make_gateway,
                                                                    upstream) -> None:
    gw = await make_gateway()
    upstream.script = Script(tokens=["a ", "b "], done_without_finish=True)
    async with aiohttp.ClientSession() as s, s.post(gw.url + "/v1/chat/completions",
                                                    json=BODY) as resp:
        events = await _events(resp)
    assert events[-1]["error"]["type"] == "upstream_error"


def test_scheduling_settings_from_flags_environment_and_their_errors() -> None:
    import pytest

    from gateway.config import ConfigError, load_config

    cfg = load_config({"model_aliases": ("a=b",)},
                      {"ANDES_GATEWAY_ADMISSION": "off", "ANDES_GATEWAY_QUEUE_MAX": "5",
                       "ANDES_GATEWAY_ROUTING": "least_busy"})
    assert (cfg.admission, cfg.queue_max, cfg.routing) == (False, 5, "least_busy")
    assert cfg.alias_map() == {"a": "b"}
    with pytest.raises(ConfigError, match="PUBLIC=UPSTREAM_ID"):
        load_config({"model_aliases": ("nonsense",)})
    with pytest.raises(ConfigError, match="parking"):
        load_config({"parking": "sometimes"})
    with pytest.raises(ConfigError, match="queue_timeout_s"):
        load_config({"queue_timeout_s": 0.0})
    with pytest.raises(ConfigError, match="queue_starvation_s"):
        load_config({"queue_starvation_s": -1.0})
    assert load_config({}).queue_starvation_s == 0.0  # off: value alone
    cfg = load_config({}, {"ANDES_GATEWAY_QUEUE_STARVATION_S": "10"})
    assert cfg.queue_starvation_s == 10.0


async def test_a_stream_whose_engine_request_ended_frees_its_slot(make_gateway, upstream) -> None:
    """Server pacing makes a stream outlive its engine request by its buffer: the slot it held
    upstream is free the moment that request ends, not when its reader is done."""
    gw = await make_gateway(max_upstream_streams=1, parking="off")
    upstream.script = Script(tokens=["a "] * 12, gap_s=0.01)
    slow = dict(BODY, qoe={"tds": 2})  # 12 tokens at 2 tok/s: about 6 s of reading
    async with aiohttp.ClientSession() as s:
        first = await s.post(gw.url + "/v1/chat/completions", json=slow)
        assert first.status == 200
        await upstream.wait_for(lambda u: u.records and u.records[0].finished)
        second = await asyncio.wait_for(s.post(gw.url + "/v1/chat/completions", json=BODY), 3)
        assert second.status == 200
        assert upstream.requests == 2  # sent while the first reader is still reading
        await _events(second)
        second.release()
        first.close()


async def test_a_busy_one_slot_engine_is_not_taken_for_a_dead_one(make_gateway, upstream,
                                                                  monkeypatch) -> None:
    """llama-cpp-python answers GET /v1/models only between generations: a model-list refresh
    that times out while it streams must not turn the requests that follow into 502s."""
    import gateway.upstream

    gw = await make_gateway(upstream_connect_timeout_s=0.3, parking="off", admission=False)
    upstream.models_between_generations = True
    upstream.queue.append(Script(tokens=["a "] * 40, gap_s=0.1))  # the first: 4 s generating
    upstream.script = Script(tokens=["b "] * 3)  # the others: short
    async with aiohttp.ClientSession() as s:
        first = await s.post(gw.url + "/v1/chat/completions", json=BODY)
        assert first.status == 200
        monkeypatch.setattr(gateway.upstream, "MODELS_TTL_S", 0.0)  # every request refreshes
        statuses = []
        for _ in range(3):  # the first starts a refresh that times out; the others follow it
            async with s.post(gw.url + "/v1/chat/completions", json=BODY) as resp:
                statuses.append(resp.status)
                await _events(resp)
            await asyncio.sleep(0.2)
        await _events(first)
        first.release()
    assert statuses == [200, 200, 200]


async def test_closing_a_stream_ourselves_is_no_engine_failure(upstream) -> None:
    # A park (or a client leaving) closes the engine's stream while it is being read; counted as
    # engine failures, a few in a row took a healthy upstream out of routing, stranding the
    # streams parked on it.
    upstream.script = Script(tokens=["a "] * 200, gap_s=0.02)
    up = Upstream(GatewayConfig(upstreams=(upstream.url,)))
    await up.start()
    try:
        replica = up.replicas[0]
        for i in range(HEALTH_FAILURES + 1):
            stream = await up.open("chat", dict(BODY, model="test-model"), stream_id=f"s{i}",
                                   qoe=QoESpec(1.0, 5.0), server=replica)
            events = stream.events()
            await anext(events)
            reading = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0)
            stream.close()
            try:
                while True:
                    await asyncio.wait_for(reading, 5)
                    reading = asyncio.ensure_future(anext(events))
            except (UpstreamError, StopAsyncIteration):
                pass
        assert replica.failures == 0 and replica.healthy
    finally:
        await up.close()


async def test_a_short_answer_queued_after_a_long_one_goes_first(make_gateway, upstream,
                                                                caplog) -> None:  # fmt: skip
    """The queue's order reads each request's max_tokens (admission.py, "Planning"): with one
    upstream slot taken, a request for 5 tokens that came after one for 200 is sent first.
    At debug level every admission is logged with the rule that made it."""
    caplog.set_level(logging.DEBUG, logger="andes.gateway")
    gw = await make_gateway(max_upstream_streams=1, parking="off")
    upstream.script = Script(tokens=["a "] * 10, gap_s=0.05)
    async with aiohttp.ClientSession() as s:
        first = await s.post(gw.url + "/v1/chat/completions", json=dict(BODY, max_tokens=10))
        long = asyncio.create_task(
            s.post(gw.url + "/v1/chat/completions", json=dict(BODY, max_tokens=200)))
        await asyncio.sleep(0.2)  # queued first
        short = asyncio.create_task(
            s.post(gw.url + "/v1/chat/completions", json=dict(BODY, max_tokens=5)))
        await asyncio.sleep(0.2)
        assert upstream.requests == 1
        await _events(first)
        first.release()
        for task in (short, long):
            resp = await asyncio.wait_for(task, 20)
            assert resp.status == 200
            await _events(resp)
            resp.release()
    assert [r.body["max_tokens"] for r in upstream.records] == [10, 5, 200]
    lines = [r.getMessage() for r in caplog.records if r.name == "andes.gateway"]
    assert any("sent at once (idle)" in line for line in lines), lines
    plans = [line for line in lines if line.startswith("plan: admitted=1")]
    assert len(plans) == 2 and all("by={'idle': 1}" in line for line in plans), plans
