"""The gateway reports its live streams' slack to a real slack receiver (the engine's side)."""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import urlsplit

import aiohttp
import pytest
from support.wait import until
from websockets.asyncio.client import connect

from bench.scripted_engine import Script
from slack.discovery import advert_path, write_advert
from slack.receiver import SlackServer, SlackServerConfig

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def slack():
    server = SlackServer(SlackServerConfig())
    server.start()
    yield server
    await asyncio.to_thread(server.stop)  # off the loop: the gateway's reporter answers the close


def report(server: SlackServer, sid: str):
    return server.fresh(sid, server.clock(), stale_after_s=5.0)


async def test_a_paced_stream_is_reported_paused_and_resumed(make_gateway, upstream, slack) -> None:
    gw = await make_gateway(slack_urls=(slack.url,), slack_interval_s=0.01)
    upstream.script = Script(tokens=[f"w{i} " for i in range(20)])  # a burst; paced at 6 tok/s
    async with connect(gw.ws_url, subprotocols=["andes.v1.json"]) as ws:
        await ws.send(json.dumps({"type": "start", "messages": MSGS, "qoe": {"tds": 6.0}}))
        sid = json.loads(await ws.recv())["stream_id"]
        # The engine's request carries the id the reports are keyed by.
        await until(lambda: upstream.records)
        assert upstream.records[-1].body["vllm_xargs"]["andes_stream_id"] == sid
        # Everything arrived at the gateway, most of it not yet read: that is the slack.
        await until(lambda: (r := report(slack, sid)) is not None and r.delivered == 20)
        r = report(slack, sid)
        assert r.consumed < 20 and r.tds_tok_s == 6.0 and not r.paused
        await ws.send(json.dumps({"type": "pause"}))
        await until(lambda: (r := report(slack, sid)) is not None and r.paused)
        await ws.send(json.dumps({"type": "pace", "tds": 3.0}))
        await ws.send(json.dumps({"type": "resume"}))
        await until(lambda: (r := report(slack, sid)) is not None and not r.paused
                    and r.tds_tok_s == 3.0)
        await ws.send(json.dumps({"type": "cancel"}))
    metrics = await _get(gw.url + "/metrics")
    assert 'andes_gateway_slack_reporter_total{event="frames_sent"}' in metrics


async def test_client_acks_are_reported(make_gateway, upstream, slack) -> None:
    gw = await make_gateway(slack_urls=(slack.url,), slack_interval_s=0.01)
    # The engine is still producing while the client acknowledges.
    upstream.script = Script(tokens=[f"w{i} " for i in range(40)], gap_s=0.05)
    async with connect(gw.ws_url, subprotocols=["andes.v1.json"]) as ws:
        await ws.send(json.dumps({"type": "start", "messages": MSGS, "pacing": "client"}))
        sid = json.loads(await ws.recv())["stream_id"]
        got = 0
        async with asyncio.timeout(10):  # a safety bound: a missing delta fails, never hangs
            while got < 4:
                frame = json.loads(await ws.recv())
                if frame["type"] == "delta":
                    got += frame["count"]
        await ws.send(json.dumps({"type": "ack", "consumed": 2}))
        await until(lambda: (r := report(slack, sid)) is not None and r.consumed == 2
                    and r.delivered >= 4)
        await ws.send(json.dumps({"type": "cancel"}))


async def _get(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.text()


async def test_the_engine_is_discovered_from_its_advert(
    make_gateway, upstream, slack, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("ANDES_SLACK_DIR", str(tmp_path))
    port = urlsplit(upstream.url).port
    assert port is not None
    write_advert(advert_path(port, 0, tmp_path), {"url": slack.url, "pid": os.getpid()})
    gw = await make_gateway(slack_interval_s=0.01)
    upstream.script = Script(tokens=[f"w{i} " for i in range(5)], first_delay_s=0.3)
    async with connect(gw.ws_url, subprotocols=["andes.v1.json"]) as ws:
        await ws.send(json.dumps({"type": "start", "messages": MSGS}))
        sid = json.loads(await ws.recv())["stream_id"]
        await until(lambda: report(slack, sid) is not None)
        async with asyncio.timeout(10):  # a safety bound, as above
            while json.loads(await ws.recv())["type"] != "done":
                pass


async def test_no_slack_endpoint_no_reporter(make_gateway, upstream, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ANDES_SLACK_DIR", str(tmp_path))  # nothing advertised: stock vLLM
    gw = await make_gateway(slack_discovery=False)
    metrics = await _get(gw.url + "/metrics")
    assert "andes_gateway_slack_reporter" not in metrics
