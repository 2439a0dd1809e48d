"""The OpenAI-compatible HTTP API through the gateway, with the official openai client and raw
aiohttp, against the scripted engine."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import openai

from bench.scripted_engine import Script
from gateway.sse import SSEParser

MSGS = [{"role": "user", "content": "hi"}]


async def _sse_events(resp: aiohttp.ClientResponse) -> list[tuple[float, str]]:
    """(arrival time, data) of every event of an SSE response."""
    loop = asyncio.get_running_loop()
    out, buf = [], b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.decode().splitlines():
                if line.startswith("data: "):
                    out.append((loop.time(), line[6:]))
    return out


async def test_async_openai_client_streams_through_the_gateway(gateway, upstream) -> None:
    upstream.script = Script(tokens=["Hello", " there", ",", " reader", "."])
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="test-model", messages=MSGS, stream=True,
        stream_options={"include_usage": True}, extra_body={"qoe": {"tds": 200}})
    text, finish, usage, andes = "", None, None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
            andes = (chunk.model_extra or {}).get("andes") or andes
        if chunk.usage:
            usage = chunk.usage
    await client.close()
    assert text == "Hello there, reader."
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5
    assert andes is not None and 0.0 <= andes["qoe"] <= 1.0 and andes["tokens"] == 5
    body = upstream.records[0].body
    assert "qoe" not in body and "pacing" not in body  # Andes fields stay at the gateway
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["vllm_xargs"]["andes_tds"] == 200
    assert body["vllm_xargs"]["andes_stream_id"] == andes["stream_id"]


async def test_sync_openai_client_streaming_and_not(gateway, upstream) -> None:
    upstream.script = Script(tokens=["a", "b", "c"])
    # The sync client blocks, so it runs in a thread while the servers run in this loop.
    await asyncio.to_thread(_sync_client_session, gateway.url)


def _sync_client_session(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    whole = client.chat.completions.create(model="test-model", messages=MSGS)
    assert whole.choices[0].message.content == "abc"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.total_tokens == 10
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="test-model", messages=MSGS, stream=True, extra_headers={"X-Andes-Pacing": "off"})
        if c.choices]
    assert "".join(parts) == "abc"
    done = client.completions.create(model="test-model", prompt="say abc")
    assert done.choices[0].text == "abc"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="test-model", prompt="say abc", stream=True, extra_body={"pacing": "off"}))
    assert streamed == "abc"
    assert [m.id for m in client.models.list()] == ["test-model"]
    client.close()


async def test_sse_is_paced_at_the_readers_pace(gateway, upstream) -> None:
    """A burst of 20 tokens at tds=40 reaches the client spread over about 0.5 s."""
    upstream.script = Script(tokens=[f"w{i} " for i in range(20)])
    async with aiohttp.ClientSession() as s, s.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "test-model", "messages": MSGS, "stream": True,
              "qoe": {"tds": 40, "ttft": 1}},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["X-Andes-Stream-Id"]
        events = await _sse_events(resp)
    assert events[-1][1] == "[DONE]"
    chunks = [(t, json.loads(d)) for t, d in events[:-1]]
    assert chunks[0][1]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [(t, c["choices"][0]["delta"].get("content")) for t, c in chunks
               if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert "".join(text for _, text in content) == "".join(f"w{i} " for i in range(20))
    # The upstream sent everything at once; the gateway spread it: many writes, not one,
    # and the last token arrived at least ~19/40 s after the first (wide margin: 0.35 s).
    assert len(content) >= 10
    assert content[-1][0] - content[0][0] >= 0.35
    final = chunks[-1][1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["andes"]["tokens"] == 20


async def test_pacing_off_passes_a_burst_through(gateway, upstream) -> None:
    # The engine sends 20 tokens at once, then stalls for a minute. The reader's declared pace
    # (0.01 tok/s) would have a pacing gateway hold each token after the first for 100 s; with
    # pacing off the whole burst reaches the client while the engine is still stalled.
    burst = [f"w{i} " for i in range(20)]
    upstream.script = Script(tokens=[*burst, "late "], stall_after=20, stall_s=60.0)
    parser, text = SSEParser(), ""
    async with aiohttp.ClientSession() as s, s.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "test-model", "messages": MSGS, "stream": True, "pacing": "off",
              "qoe": {"tds": 0.01}},
    ) as resp:
        async with asyncio.timeout(10):  # a safety bound: a held-back token fails, never hangs
            while text != "".join(burst):
                for event in parser.feed(await resp.content.readany()):
                    choices = json.loads(event.data)["choices"]
                    text += (choices[0]["delta"].get("content") or "") if choices else ""
        assert text == "".join(burst)
        record = upstream.records[0]
        assert record.sent == 20 and not record.finished  # the engine is still in its stall
    await upstream.wait_for(lambda u: u.cancelled == 1)  # the client left: the request ends
