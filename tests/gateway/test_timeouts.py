"""Every wait is bounded: a reader that never reads, an engine that stops answering, a client
that trickles its request (issue 12, items 1 and 3). Each test asserts that the stream or the
connection ends and how; the waits have generous safety bounds, never timed assertions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from support.rawclient import connect_raw, http_request, ws_frame, ws_handshake
from support.wait import until

from bench.scripted_engine import Script
from gateway.auth import GATEWAY
from gateway.pacer import Pacer, PacerConfig, PacerOverflow

MSGS = [{"role": "user", "content": "hi"}]
GOOD = {"model": "test-model", "messages": MSGS}
ROOT = Path(__file__).resolve().parents[2]


# -- 1. a reader that never reads ------------------------------------------------------------------

# One 8 MiB token: one write, made while the transport's backlog is 0, more than the kernel's
# socket buffers take (a few MiB on loopback), so it blocks in drain(). Then a trickle that keeps
# the engine busy for minutes. The byte bound is set out of reach: only the slow-reader timeout
# can end this stream.
NEVER_READ = Script(tokens=["x" * (8 << 20)] + ["y "] * 5000, gap_s=0.05)


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_a_reader_that_never_reads_is_dropped_within_the_timeout(
        make_gateway, upstream, transport) -> None:
    gw = await make_gateway(slow_reader_timeout_s=1.0, max_buffered_bytes=1 << 26)
    upstream.script = NEVER_READ
    reader, writer = await connect_raw(gw.url, rcvbuf=4096)
    try:
        if transport == "sse":
            writer.write(http_request("/v1/chat/completions",
                                      {**GOOD, "stream": True, "pacing": "off"}))
        else:
            writer.write(ws_handshake())
            await reader.readuntil(b"\r\n\r\n")  # the 101; from here on, nothing is read
            writer.write(ws_frame(json.dumps({"type": "start", "messages": MSGS,
                                              "pacing": "off"})))
        await until(lambda: upstream.records and upstream.records[0].sent > 10, "streaming", 20)
        table = gw.app[GATEWAY].table
        await until(lambda: len(table) == 0, "the stream was ended", 20)
        await upstream.wait_for(lambda u: u.cancelled == 1, 20)
        assert not upstream.records[0].finished
    finally:
        writer.close()
    async with aiohttp.ClientSession() as s, s.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert 'reason="error"' in text  # a slow reader, not a client that went away


def test_the_buffer_bound_counts_bytes_as_well_as_tokens() -> None:
    pacer = Pacer(PacerConfig(mode="off", max_buffered_tokens=1000, max_buffered_bytes=100))
    pacer.feed(["é" * 25], 0.0)  # 25 characters, 50 bytes
    with pytest.raises(PacerOverflow, match="bytes"):
        pacer.feed(["x" * 51], 0.0)  # one token, but 101 bytes in all
    [chunk] = pacer.due(0.0)
    assert chunk.text == "é" * 25
    pacer.feed(["x" * 100], 0.0)  # released text no longer counts


async def test_a_large_burst_to_a_reader_that_does_not_read_overflows_in_bytes(
        make_gateway, upstream) -> None:
    gw = await make_gateway(max_buffered_bytes=1 << 16, slow_reader_timeout_s=60)
    upstream.script = Script(tokens=["z" * 4096] * 2000, gap_s=0.001)
    _reader, writer = await connect_raw(gw.url, rcvbuf=4096)
    try:
        writer.write(http_request("/v1/chat/completions",
                                  {**GOOD, "stream": True, "pacing": "off"}))
        table = gw.app[GATEWAY].table
        await upstream.wait_for(lambda u: u.requests == 1, 20)
        await until(lambda: len(table) == 0, "the stream was ended", 20)  # long before 60 s
        await upstream.wait_for(lambda u: u.cancelled == 1, 20)
    finally:
        writer.close()


# -- 3. an engine that stops answering ---------------------------------------------------------


@contextlib.asynccontextmanager
async def _engine_process(tokens: int, gap_s: float) -> AsyncIterator[tuple[str, int]]:
    """The scripted engine as a process of its own (a real SIGSTOP needs one)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.scripted_engine", "--tokens",
                             str(tokens), "--gap-s", str(gap_s)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith("http://"), line
        yield line.strip(), proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(10)


async def test_a_stopped_engine_gives_new_requests_an_error_and_ends_live_streams(
        make_gateway) -> None:
    async with _engine_process(100_000, 0.02) as (url, pid):
        gw = await make_gateway(upstreams=(url,), upstream_first_byte_timeout_s=1.0,
                                upstream_stall_timeout_s=1.0)
        async with aiohttp.ClientSession() as s:
            live = await s.post(gw.url + "/v1/chat/completions",
                                json={**GOOD, "stream": True, "qoe": {"tds": 1000}})
            assert live.status == 200
            await live.content.readline()
            reading = asyncio.create_task(live.read())  # the live stream, read as it comes
            os.kill(pid, signal.SIGSTOP)
            # A new request: the engine's kernel accepts the connection, nobody answers.
            async with asyncio.timeout(30):
                async with s.post(gw.url + "/v1/chat/completions", json=GOOD) as resp:
                    assert resp.status == 504
                    err = await resp.json()
            assert err["error"]["code"] == "upstream_timeout"
            # The live stream: its reader drains what was buffered, then waits on the engine.
            async with asyncio.timeout(30):
                body = (await reading).decode()
            live.close()
        events = [e.strip()[6:] for e in body.split("\n\n") if e.strip().startswith("data: ")]
        assert len(events) >= 2 and events[-1] == "[DONE]", body[-800:]
        assert json.loads(events[-2])["error"]["code"] == "upstream_timeout"


async def test_a_held_stream_whose_reader_has_text_is_not_a_stall(make_gateway, upstream) -> None:
    """Silence is no fault while the reader has text to read (the scheduler holds such streams)."""
    gw = await make_gateway(upstream_stall_timeout_s=0.3)
    upstream.script = Script(tokens=[f"w{i} " for i in range(12)], stall_after=10, stall_s=1.0)
    async with aiohttp.ClientSession() as s, s.post(
            gw.url + "/v1/chat/completions",
            json={**GOOD, "stream": True, "qoe": {"tds": 5}}) as resp:
        body = (await resp.read()).decode()
    assert '"finish_reason":"stop"' in body and "upstream_timeout" not in body


# -- 3. a client that trickles its request (slowloris) ---------------------------------------------


async def test_a_connection_that_trickles_its_headers_is_closed(make_gateway) -> None:
    gw = await make_gateway(request_timeout_s=1.0)
    reader, writer = await connect_raw(gw.url)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
    closed = False
    async with asyncio.timeout(20):
        for i in range(1000):  # a header byte every 50 ms, never the end of the headers
            try:
                writer.write(b"X-Slow-%d: 1\r\n" % i)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), 0.05)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            if not data:
                closed = True
                break
    writer.close()
    assert closed


async def test_a_body_that_trickles_is_a_408(make_gateway, upstream) -> None:
    gw = await make_gateway(request_timeout_s=1.0)
    reader, writer = await connect_raw(gw.url)
    head = http_request("/v1/chat/completions", GOOD).split(b"\r\n\r\n")[0]
    head = head.replace(b"Content-Length: ", b"Content-Length: 9") + b"\r\n\r\n"
    writer.write(head + b"{")
    async with asyncio.timeout(20):
        response = b""
        with contextlib.suppress(ConnectionError):
            while b"\r\n\r\n" not in response:
                writer.write(b" ")
                with contextlib.suppress(TimeoutError):
                    chunk = await asyncio.wait_for(reader.read(4096), 0.05)
                    if not chunk:
                        break
                    response += chunk
    writer.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert upstream.requests == 0
