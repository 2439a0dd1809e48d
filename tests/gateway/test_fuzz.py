"""A fuzz corpus for the gateway's edges (issue 12, item 8): generated HTTP bodies and WebSocket
conversations, with every input the adversarial probe broke the gateway with as an explicit
``@example``. After each case: no 5xx, every HTTP error an OpenAI error object, every WebSocket
frame a valid server frame with a documented error code and the conversation ended by a
documented close code, nothing non-standard sent to the engine, and the gateway still serving.

One gateway and one scripted engine run for the whole module in an event loop of their own (a
thread), so that hypothesis drives plain functions. Example counts: a quarter of the hypothesis
profile's ``max_examples`` (25 by default; ``--hypothesis-profile=andes-long`` for 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import aiohttp
import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.scripted_engine import Script, ScriptedEngine
from gateway import protocol as p
from gateway.app import start
from gateway.auth import GATEWAY
from gateway.config import GatewayConfig

EXAMPLES = max(10, settings.default.max_examples // 4)
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MSGS = [{"role": "user", "content": "hi"}]
GOOD = {"model": "test-model", "messages": MSGS}
STATUSES = {200, 400, 404, 408, 413, 415, 429}
CLOSE_CODES = {1007, 1009, 4401, 1001}  # docs/protocol.md


class Live:
    """The gateway and engine in a background event loop; :meth:`run` a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.upstream = ScriptedEngine()
        self.run(self.upstream.start())
        self.upstream.script = Script(tokens=["a ", "b ", "c "])
        config = GatewayConfig(upstreams=(self.upstream.url,), port=0, max_body_bytes=1 << 16,
                               max_tokens=1000, tds_tok_s=500.0, shutdown_grace_s=0.5,
                               request_timeout_s=5.0)
        self.runner, port = self.run(start(config, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/stream"

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.run(self.upstream.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def serving(self) -> None:
        """The gateway answers its health check (the engine being up, 200)."""
        async with aiohttp.ClientSession() as s, s.get(self.url + "/health") as resp:
            assert resp.status == 200, await resp.text()


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    harness = Live()
    yield harness
    try:
        # Nothing was left behind: no live stream, no engine request still streaming.
        async def settled() -> None:
            table = harness.runner.app[GATEWAY].table
            for _ in range(500):
                if len(table) == 0 and all(r.finished or r.cancelled
                                           for r in harness.upstream.records):
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"{len(table)} streams still live after the fuzz cases")
        harness.run(settled())
        for record in harness.upstream.records:
            json.dumps(record.body, allow_nan=False)  # standard JSON only reached the engine
    finally:
        harness.close()


# -- strategies ------------------------------------------------------------------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8)
NUMBERS = st.one_of(st.integers(-5, 2000), st.floats(-10, 2000), st.booleans(), st.just(None))
MESSAGES = st.one_of(
    st.just(MSGS),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from((*p.ROLES, "robot")),
                                    "content": st.one_of(st.text(max_size=30), JUNK)}),
             max_size=3),
    JUNK)
FIELDS = {
    "model": st.one_of(st.just("test-model"), st.text(max_size=10), JUNK),
    "messages": MESSAGES,
    "prompt": st.one_of(st.text(max_size=20), JUNK),
    "stream": st.one_of(st.booleans(), JUNK),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": JUNK}), JUNK),
    "qoe": st.one_of(st.fixed_dictionaries({"ttft": NUMBERS, "tds": NUMBERS}), JUNK),
    "pacing": st.one_of(st.sampled_from(p.PACINGS), JUNK),
    "n": NUMBERS,
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6), JUNK),
    "temperature": NUMBERS, "top_p": NUMBERS, "max_tokens": NUMBERS, "seed": NUMBERS,
    "vllm_xargs": st.one_of(st.dictionaries(st.text(max_size=5), JUNK, max_size=3), JUNK),
    "tools": JUNK,
}
BODIES = st.fixed_dictionaries({}, optional=FIELDS).map(
    lambda d: json.dumps(d, allow_nan=True))  # NaN too: the gateway must refuse it
RAW = st.one_of(BODIES, st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8",
                                 "text/plain", "application/x-www-form-urlencoded", ""])
PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions"])


def _dump(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


# -- HTTP -------------------------------------------------------------------------------------

async def _http_case(live: Live, path: str, body: str, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    async with aiohttp.ClientSession() as s, s.post(
            live.url + path, data=body.encode("utf-8", "surrogatepass"), headers=headers,
            skip_auto_headers=["Content-Type"]) as resp:
        assert resp.status in STATUSES, (resp.status, await resp.text())
        if resp.status != 200:
            err = await resp.json(content_type=None)
            assert set(err["error"]) == {"message", "type", "param", "code"}, err
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 0
            # A 200 stream is not read to its end: the client leaves (its engine request is
            # cancelled; the module's teardown checks that none is left).
    await live.serving()


@FUZZ
@given(path=PATHS, body=RAW, ctype=CONTENT_TYPES)
@example(path="/v1/chat/completions", ctype="application/json",
         body=_dump({**GOOD, "vllm_xargs": 1}))
@example(path="/v1/chat/completions", ctype="application/json",
         body='{"model": "test-model", "messages": ' + "[" * 5000 + "]" * 5000 + "}")
@example(path="/v1/chat/completions", ctype="application/json",
         body=_dump({**GOOD, "presence_penalty": math.nan}))
@example(path="/v1/chat/completions", ctype="application/json",
         body=_dump({**GOOD, "seed": math.inf}))
@example(path="/v1/chat/completions", ctype="application/json", body=_dump({**GOOD, "n": True}))
@example(path="/v1/chat/completions", ctype="application/json",
         body=_dump({**GOOD, "stream": True, "stream_options": {"include_usage": "yes"}}))
@example(path="/v1/chat/completions", ctype="application/json", body=_dump({**GOOD, "stop": 7}))
@example(path="/v1/chat/completions", ctype="text/plain", body=_dump(GOOD))
@example(path="/v1/chat/completions", ctype="", body=_dump(GOOD))
@example(path="/v1/completions", ctype="application/json",
         body=_dump({"model": "test-model", "prompt": ["a", "b"]}))
def test_http_bodies(live: Live, path: str, body: str, ctype: str) -> None:
    live.run(_http_case(live, path, body, ctype))


@FUZZ
@given(name=st.text(min_size=1, max_size=300) | st.just("a" * 5000))
@example(name="a" * 5000)
@example(name="%00")
@example(name="../../pyproject.toml")
def test_static_names(live: Live, name: str) -> None:
    async def case() -> None:
        async with aiohttp.ClientSession() as s, s.get(live.url + "/static/" + name) as resp:
            assert resp.status < 500
        await live.serving()
    live.run(case())


# -- WebSocket --------------------------------------------------------------------------------

START_FIELDS = {k: v for k, v in FIELDS.items() if k not in ("prompt", "stream",
                                                              "stream_options", "tools")}
START_FIELDS.update(id=st.one_of(st.text(max_size=10), JUNK, st.just("\ud800")),
                    extra_body=st.one_of(st.dictionaries(st.sampled_from(
                        ["vllm_xargs", "ignore_eos", "min_tokens", "model", "x"]), JUNK,
                        max_size=3), JUNK))
FRAMES = st.one_of(
    st.fixed_dictionaries({"type": st.just("start")}, optional=START_FIELDS),
    st.fixed_dictionaries({"type": st.sampled_from(["ack", "pace"])},
                          optional={"consumed": NUMBERS, "tds": NUMBERS}),
    st.fixed_dictionaries({"type": st.sampled_from(["pause", "resume", "cancel"])}),
    st.fixed_dictionaries({"type": JUNK}),
    JUNK,
)
SUBPROTOCOLS = st.sampled_from(list(p.SUBPROTOCOLS))


def _encode(frame: Any, sub: str) -> str | bytes:
    if sub == p.MSGPACK_SUBPROTOCOL:
        try:
            return msgpack.packb(frame, use_bin_type=True)
        except (OverflowError, ValueError, TypeError):  # an integer msgpack cannot carry
            return msgpack.packb({"type": "cancel"})
    return json.dumps(frame, allow_nan=True)


async def _ws_case(live: Live, sub: str, frames: list[Any]) -> None:
    received: list[Any] = []
    async with connect(live.ws_url, subprotocols=[sub], open_timeout=10,
                       max_size=1 << 22) as ws:
        for frame in frames:
            await ws.send(_encode(frame, sub))
        # An unknown frame type is fatal: the gateway answers bad_frame and closes 1007, after
        # everything sent before it — so the conversation always ends, and ends here.
        await ws.send(_encode({"type": "zz-end"}, sub))
        with contextlib.suppress(ConnectionClosed):
            while True:
                data = await asyncio.wait_for(ws.recv(), 20)
                received.append(msgpack.unpackb(data) if isinstance(data, bytes)
                                else json.loads(data))
    assert ws.close_code in CLOSE_CODES, (ws.close_code, received)
    for obj in received:
        frame = p.parse_server_frame(obj)
        if isinstance(frame, p.Error):
            assert frame.code in p.ERROR_CODES, frame
    assert received and received[-1]["type"] == "error" and received[-1]["fatal"], received
    await live.serving()


@FUZZ
@given(sub=SUBPROTOCOLS, frames=st.lists(FRAMES, max_size=4))
@example(sub=p.JSON_SUBPROTOCOL,
         frames=[{"type": "start", "messages": MSGS, "extra_body": {"vllm_xargs": 1}}])
@example(sub=p.JSON_SUBPROTOCOL, frames=[{"type": "start", "messages": MSGS, "id": "\ud800"}])
@example(sub=p.MSGPACK_SUBPROTOCOL,
         frames=[{"type": "start", "messages": MSGS, "extra_body": {"min_p": math.nan}}])
@example(sub=p.JSON_SUBPROTOCOL, frames=[{"type": "start", "messages": MSGS, "pacing": "client"},
                                         {"type": "ack", "consumed": 10**9}, {"type": "cancel"}])
@example(sub=p.JSON_SUBPROTOCOL, frames=[{"type": "start", "messages": [[[[[]]]]] * 3}])
def test_websocket_conversations(live: Live, sub: str, frames: list[Any]) -> None:
    live.run(_ws_case(live, sub, frames))


@FUZZ
@given(payload=st.one_of(st.text(max_size=100), st.binary(max_size=100)), sub=SUBPROTOCOLS)
@example(payload='{"type": "start", "messages": ' + "[" * 5000 + "]" * 5000 + "}",
         sub=p.JSON_SUBPROTOCOL)
@example(payload=b"\x91" * 5000 + b"\xc0", sub=p.MSGPACK_SUBPROTOCOL)
@example(payload="NaN", sub=p.JSON_SUBPROTOCOL)
def test_websocket_raw_payloads(live: Live, payload: str | bytes, sub: str) -> None:
    async def case() -> None:
        async with connect(live.ws_url, subprotocols=[sub], open_timeout=10) as ws:
            await ws.send(payload)
            await ws.send(_encode({"type": "zz-end"}, sub))
            with contextlib.suppress(ConnectionClosed):
                while True:
                    data = await asyncio.wait_for(ws.recv(), 20)
                    obj = msgpack.unpackb(data) if isinstance(data, bytes) else json.loads(data)
                    frame = p.parse_server_frame(obj)
                    assert not isinstance(frame, p.Error) or frame.code in p.ERROR_CODES
        assert ws.close_code in CLOSE_CODES
        await live.serving()
    live.run(case())


def test_a_full_stream_after_the_corpus(live: Live) -> None:
    async def case() -> None:
        async with aiohttp.ClientSession() as s, s.post(
                live.url + "/v1/chat/completions", json={**GOOD, "stream": True}) as resp:
            body = await resp.text()
        assert resp.status == 200 and body.rstrip().endswith("data: [DONE]")
    live.run(case())
