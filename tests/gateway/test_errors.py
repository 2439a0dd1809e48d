"""Bad input, limits, authentication and engine failures: the right OpenAI error, nothing sent to
the engine when the request was bad, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import openai
import pytest
from support.wait import until

from bench.scripted_engine import Script

MSGS = [{"role": "user", "content": "hi"}]
GOOD = {"model": "test-model", "messages": MSGS}


async def _post(url: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None, path: str = "/v1/chat/completions"
                ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        data = raw if raw is not None else json.dumps(body).encode()
        async with s.post(url + path, data=data, headers={
                "Content-Type": "application/json", **(headers or {})}) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


BAD_REQUESTS = [
    ("malformed JSON", None, b'{"model": ', {}, 400),
    ("body not an object", [1, 2], None, {}, 400),
    ("missing model", {"messages": MSGS}, None, {}, 400),
    ("messages not a list", {**GOOD, "messages": "hi"}, None, {}, 400),
    ("bad role", {**GOOD, "messages": [{"role": "x", "content": "y"}]}, None, {}, 400),
    ("stream not bool", {**GOOD, "stream": "yes"}, None, {}, 400),
    ("temperature string", {**GOOD, "temperature": "hot"}, None, {}, 400),
    ("max_tokens string", {**GOOD, "max_tokens": "10"}, None, {}, 400),
    ("max_tokens over the limit", {**GOOD, "max_tokens": 10_000}, None, {}, 400),
    ("n = 0", {**GOOD, "n": 0}, None, {}, 400),
    ("n null-ish string", {**GOOD, "n": "2"}, None, {}, 400),
    ("model null", {**GOOD, "model": None}, None, {}, 400),
    ("stream null", {**GOOD, "stream": None}, None, {}, 400),
    ("stream_options a list", {**GOOD, "stream_options": [True]}, None, {}, 400),
    ("qoe tds zero", {**GOOD, "qoe": {"tds": 0}}, None, {}, 400),
    ("qoe ttft negative", {**GOOD, "qoe": {"ttft": -1}}, None, {}, 400),
    ("qoe not an object", {**GOOD, "qoe": "fast"}, None, {}, 400),
    ("bad pacing", {**GOOD, "pacing": "fast"}, None, {}, 400),
    ("bad TDS header", GOOD, None, {"X-Andes-TDS": "abc"}, 400),
    ("infinite TTFT header", GOOD, None, {"X-Andes-TTFT": "inf"}, 400),
    ("bad pacing header", GOOD, None, {"X-Andes-Pacing": "warp"}, 400),
    ("unknown model", {**GOOD, "model": "nope"}, None, {}, 404),
    ("oversized body", {**GOOD, "pad": "x" * 5000}, None, {}, 413),
]


@pytest.mark.parametrize(("name", "body", "raw", "headers", "status"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_request_is_refused_before_the_engine(
    make_gateway, upstream, name, body, raw, headers, status
) -> None:
    gw = await make_gateway(max_body_bytes=4096, max_tokens=1000)
    got, err = await _post(gw.url, body, raw=raw, headers=headers)
    assert got == status, err
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["message"]
    # Users read JSON's words, never Python's (the page once showed "got None").
    assert not re.search(r"\b(None|True|False|NoneType)\b", err["error"]["message"]), err
    assert upstream.requests == 0
    # ... and the gateway keeps serving.
    got, ok = await _post(gw.url, GOOD)
    assert got == 200 and ok["choices"][0]["message"]["content"]


async def test_error_messages_quote_the_bad_value(gateway) -> None:
    _, err = await _post(gateway.url, {**GOOD, "qoe": {"tds": -3.5}})
    assert "-3.5" in err["error"]["message"]


async def test_api_keys(make_gateway, upstream) -> None:
    gw = await make_gateway(api_keys=("k1", "k2"))
    status, err = await _post(gw.url, GOOD)
    assert status == 401 and err["error"]["code"] == "invalid_api_key"
    status, err = await _post(gw.url, GOOD, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "wrong" not in json.dumps(err)
    assert upstream.requests == 0
    status, _ = await _post(gw.url, GOOD, headers={"Authorization": "Bearer k2"})
    assert status == 200
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="nope")
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    await client.close()
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/health") as resp:
        assert resp.status == 200  # health and metrics stay open


async def test_engine_4xx_is_forwarded(gateway, upstream) -> None:
    upstream.script = Script(status=400, error={
        "message": "This model's maximum context length is 2048 tokens", "type":
        "BadRequestError", "param": None, "code": 400})
    status, err = await _post(gateway.url, GOOD)
    assert status == 400
    assert "maximum context length" in err["error"]["message"]
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        await client.chat.completions.create(model="test-model", messages=MSGS, stream=True)
    await client.close()


async def test_unreachable_engine_is_a_502(make_gateway) -> None:
    # A port nothing listens on (bound then closed).
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    for models in ((), ("test-model",)):  # discovery fails, or the request itself fails
        gw = await make_gateway(upstreams=(f"http://127.0.0.1:{port}",), models=models)
        status, err = await _post(gw.url, GOOD)
        assert status == 502, err
        assert err["error"]["type"] == "upstream_error"
        async with aiohttp.ClientSession() as s, s.get(gw.url + "/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["upstreams"][0]["reachable"] is False


@pytest.mark.parametrize("failure", ["error_after", "drop_after"])
async def test_engine_failure_mid_stream_ends_cleanly(gateway, upstream, failure) -> None:
    upstream.script = Script(tokens=["a ", "b ", "c ", "d "], **{failure: 2})
    async with aiohttp.ClientSession() as s, s.post(
        gateway.url + "/v1/chat/completions", json={**GOOD, "stream": True, "pacing": "off"}
    ) as resp:
        assert resp.status == 200
        body = (await resp.read()).decode()
    events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["type"] == "upstream_error"
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        async for _ in await client.chat.completions.create(
                model="test-model", messages=MSGS, stream=True):
            pass
    await client.close()
    # The gateway still serves.
    upstream.script = Script()
    status, _ = await _post(gateway.url, GOOD)
    assert status == 200


async def test_concurrency_limit_is_a_429(make_gateway, upstream) -> None:
    gw = await make_gateway(max_concurrent_streams=1)
    upstream.script = Script(tokens=["slow"], first_delay_s=30)
    first = asyncio.create_task(_post(gw.url, {**GOOD, "stream": True}))
    await upstream.wait_for(lambda u: u.requests == 1)
    status, err = await _post(gw.url, GOOD)
    assert status == 429 and err["error"]["type"] == "rate_limit_error"
    assert upstream.requests == 1
    first.cancel()
    await upstream.wait_for(lambda u: u.cancelled == 1)
    upstream.script = Script()
    status, _ = await _post(gw.url, GOOD)  # the slot was freed
    assert status == 200


async def test_client_disconnect_cancels_the_engine_request(gateway, upstream) -> None:
    upstream.script = Script(tokens=[f"t{i} " for i in range(1000)], gap_s=0.01)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gateway.url + "/v1/chat/completions",
                            json={**GOOD, "stream": True, "qoe": {"tds": 50}})
        await resp.content.readline()  # the role chunk: the stream is live
        await upstream.wait_for(lambda u: u.records and u.records[0].sent > 0)
        resp.close()  # the client goes away
    await upstream.wait_for(lambda u: u.cancelled == 1)
    assert not upstream.records[0].finished
    # The slot is freed too.
    text = ""
    async with aiohttp.ClientSession() as s:
        async def freed() -> bool:
            nonlocal text
            async with s.get(gateway.url + "/metrics") as resp:
                text = await resp.text()
            return "andes_gateway_active_streams 0.0" in text

        await until(freed, "no active stream in /metrics", poll_s=0.05)
    assert "andes_gateway_active_streams 0.0" in text
    assert ('andes_gateway_streams_total{model="test-model",pacing="server",'
            'reason="disconnected"} 1.0') in text


async def test_sse_client_pacing_with_acks(gateway, upstream) -> None:
    upstream.script = Script(tokens=[f"w{i} " for i in range(10)], gap_s=0.01)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gateway.url + "/v1/chat/completions",
                            json={**GOOD, "stream": True, "pacing": "client",
                                  "qoe": {"tds": 100}})
        sid = resp.headers["X-Andes-Stream-Id"]
        ack = gateway.url + f"/v1/streams/{sid}/ack"
        async with s.post(ack, json={"consumed": 999}) as r:  # more than was sent
            assert r.status == 400
        async with s.post(ack, json={"consumed": 0, "tds": 0}) as r:
            assert r.status == 400
        async with s.post(ack, json={"consumed": 0, "tds": 20, "paused": False}) as r:
            assert r.status == 204
        body = (await resp.read()).decode()
        resp.close()
        async with s.post(ack, json={"consumed": 1}) as r:  # the stream has ended
            assert r.status == 404
    assert body.rstrip().endswith("data: [DONE]")
