"""A disconnect storm (issue 12, item 9): hundreds of streams, SSE and WebSocket, dropped at
random points — before the request is complete, while the engine is being asked, mid-stream;
with a FIN or a RST. Afterwards every engine request that was made has been cancelled, no
stream is left in the table and the active-stream gauge is back to 0."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct

import aiohttp
from support.rawclient import connect_raw, http_request, ws_frame, ws_handshake

from bench.scripted_engine import Script
from gateway.auth import GATEWAY

STREAMS = 300
MSGS = [{"role": "user", "content": "hi"}]


async def _client(url: str, rng: random.Random, n: int) -> None:
    reader, writer = await connect_raw(url)
    delay = rng.uniform(0, 1.5)
    if n % 2:
        request = http_request("/v1/chat/completions", {
            "model": "test-model", "messages": MSGS, "stream": True,
            "pacing": rng.choice(["server", "client", "off"]), "qoe": {"tds": 20}})
    else:
        request = ws_handshake() + ws_frame(json.dumps({
            "type": "start", "messages": MSGS, "pacing": rng.choice(["server", "off"])}))
    if rng.random() < 0.1:  # leave halfway through the request
        request = request[: rng.randrange(1, len(request))]
    writer.write(request)
    try:
        async with asyncio.timeout(delay):
            while await reader.read(1 << 14):  # read what comes, until the drop
                pass
    except TimeoutError:
        pass
    if rng.random() < 0.5:  # RST rather than FIN
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_disconnect_storm_cancels_every_engine_request(make_gateway, upstream) -> None:
    gw = await make_gateway(max_concurrent_streams=10_000)
    upstream.script = Script(tokens=["w "] * 400, gap_s=0.05)  # 20 s each: nothing finishes
    rng = random.Random(12)
    await asyncio.gather(*(_client(gw.url, random.Random(rng.random()), n)
                           for n in range(STREAMS)))
    table = gw.app[GATEWAY].table
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60  # a safety bound
    while len(table) or not all(r.cancelled or r.finished for r in upstream.records):
        assert loop.time() < deadline, (len(table), sum(r.cancelled for r in upstream.records),
                                        upstream.requests)
        await asyncio.sleep(0.05)
    # Drops at every stage: many got as far as the engine, many of those mid-stream.
    assert upstream.requests >= STREAMS // 4
    assert sum(r.sent > 0 for r in upstream.records) >= STREAMS // 8
    assert all(r.cancelled and not r.finished for r in upstream.records)
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert "andes_gateway_active_streams 0.0" in text
    assert "andes_gateway_buffered_tokens 0.0" in text
