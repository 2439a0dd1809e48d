"""Metrics as an operator reads them: per model, the inter-token latency as delivered, a reader's
Stop counted as a cancel (not as a client gone away) on both transports."""

from __future__ import annotations

import json

import aiohttp
from support.wait import until
from websockets.asyncio.client import connect

from bench.scripted_engine import Script

MSGS = [{"role": "user", "content": "hi"}]


async def metrics(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as resp:
        return await resp.text()


def sample(text: str, name: str) -> float:
    """The value of the sample line that starts with ``name`` (labels included)."""
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


async def test_metrics_are_per_model_with_delivered_inter_token_latency(make_gateway,
                                                                       upstream) -> None:
    upstream.models = ("model-a", "model-b")
    gw = await make_gateway()
    upstream.script = Script(tokens=[f"w{i} " for i in range(8)])
    async with aiohttp.ClientSession() as s:
        for model in ("model-a", "model-a", "model-b"):
            async with s.post(gw.url + "/v1/chat/completions", json={
                    "model": model, "messages": MSGS, "stream": True, "qoe": {"tds": 40},
                    "pacing": "server"}) as resp:
                await resp.read()
    text = await metrics(gw.url)
    assert sample(text, 'andes_gateway_stream_qoe_count{model="model-a"}') == 2
    assert sample(text, 'andes_gateway_stream_qoe_count{model="model-b"}') == 1
    assert sample(text, 'andes_gateway_streams_total{model="model-b",pacing="server",'
                        'reason="finished"}') == 1
    # Paced at 40 tokens/s, 7 gaps per stream (the first write is the TTFT): the delivered
    # inter-token latency is the reader's pace, not the engine's burst.
    count = sample(text, 'andes_gateway_inter_token_latency_seconds_count{model="model-a"}')
    total = sample(text, 'andes_gateway_inter_token_latency_seconds_sum{model="model-a"}')
    assert count >= 2 and total / count >= 0.5 / 40
    assert sample(text, 'andes_gateway_inter_token_latency_seconds_bucket{le="0.005",'
                        'model="model-a"}') < count


async def test_a_readers_stop_over_sse_is_a_cancel_not_a_disconnect(gateway, upstream) -> None:
    upstream.script = Script(tokens=[f"w{i} " for i in range(500)], gap_s=0.01)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gateway.url + "/v1/chat/completions", json={
            "model": "test-model", "messages": MSGS, "stream": True, "pacing": "client"})
        sid = resp.headers["X-Andes-Stream-Id"]
        await upstream.wait_for(lambda u: u.records and u.records[0].sent > 3)
        async with s.post(f"{gateway.url}/v1/streams/{sid}/cancel") as stop:
            assert stop.status == 204
        await resp.read()  # the gateway ends the response
        async with s.post(f"{gateway.url}/v1/streams/{sid}/cancel") as again:
            assert again.status == 404
            assert (await again.json())["error"]["param"] == "stream_id"
    await upstream.wait_for(lambda u: u.cancelled == 1)  # the engine request is aborted
    text = await metrics(gateway.url)
    assert sample(text, 'andes_gateway_streams_total{model="test-model",pacing="client",'
                        'reason="cancelled"}') == 1
    assert 'reason="disconnected"' not in text


async def test_a_readers_stop_over_the_websocket_is_a_cancel(gateway, upstream) -> None:
    upstream.script = Script(tokens=[f"w{i} " for i in range(500)], gap_s=0.01)
    async with connect(gateway.ws_url, subprotocols=["andes.v1.json"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "start", "messages": MSGS}))
        await upstream.wait_for(lambda u: u.records and u.records[0].sent > 3)
        await ws.send(json.dumps({"type": "cancel"}))
        while (frame := json.loads(await ws.recv()))["type"] != "done":
            pass
        assert frame["finish_reason"] == "cancelled"

    async def counted() -> bool:
        return 'reason="cancelled"} 1.0' in await metrics(gateway.url)

    await until(counted, "the cancel in the metrics")
    assert 'reason="disconnected"' not in await metrics(gateway.url)
