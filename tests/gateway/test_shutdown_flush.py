"""Shutdown grace: what the engine already produced reaches the reader within the grace, paced
faster if need be, instead of being dropped with the connection (a live stream at SIGTERM once
got 71 of its 300 tokens)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from bench.scripted_engine import Script

MSGS = [{"role": "user", "content": "hi"}]
WORDS = [f"w{i} " for i in range(300)]


def parse(body: str) -> tuple[str, list[dict]]:
    events = [e[6:] for e in body.split("\n\n") if e.startswith("data: ")]
    objs = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["delta"].get("content") or "" for o in objs for c in o.get("choices", ()))
    return text, objs


async def test_text_the_engine_finishes_within_the_grace_is_all_delivered(
        make_gateway, upstream) -> None:
    gw = await make_gateway(shutdown_grace_s=4)
    upstream.script = Script(tokens=WORDS, gap_s=0.004)  # the engine: ~1.2 s for 300 tokens
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.url + "/v1/chat/completions", json={
            "model": "test-model", "messages": MSGS, "stream": True, "qoe": {"tds": 5},
            "pacing": "server"})  # the reader: 60 s for 300 tokens
        await upstream.wait_for(lambda u: u.records and u.records[0].sent >= 20)
        stopping = asyncio.create_task(gw.stop())  # what SIGTERM does
        body = (await resp.read()).decode()
        await stopping
    text, objs = parse(body)
    assert text == "".join(WORDS)
    assert objs[-1]["choices"][0]["finish_reason"] == "stop" and "error" not in body
    assert objs[-1]["andes"]["tokens"] == 300


async def test_a_stream_cut_by_the_grace_still_gets_everything_produced_before_it(
        make_gateway, upstream) -> None:
    gw = await make_gateway(shutdown_grace_s=1.5)
    upstream.script = Script(tokens=WORDS, gap_s=0.05)  # the engine: 15 s, beyond the grace
    async with aiohttp.ClientSession() as s:
        resp = await s.post(gw.url + "/v1/chat/completions", json={
            "model": "test-model", "messages": MSGS, "stream": True, "qoe": {"tds": 2},
            "pacing": "server"})
        await upstream.wait_for(lambda u: u.records and u.records[0].sent >= 15)
        produced = upstream.records[0].sent
        stopping = asyncio.create_task(gw.stop())
        body = (await resp.read()).decode()
        await stopping
    text, objs = parse(body)
    delivered = text.count(" ")
    # At 2 tokens/s the reader would have had 1 or 2 of them; it gets all that existed, and the
    # stream ends in an error object that says why.
    assert delivered >= produced, (delivered, produced)
    assert text == "".join(WORDS[:delivered])
    assert objs[-1]["error"]["code"] == "shutting_down"
    await upstream.wait_for(lambda u: u.cancelled == 1)
