"""The WebSocket protocol (docs/protocol.md) with the `websockets` client, JSON and msgpack."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.scripted_engine import Script

MSGS = [{"role": "user", "content": "hi"}]
ENCODINGS = ["andes.v1.json", "andes.v1.msgpack"]
RECV_TIMEOUT_S = 10.0


class Conn:
    """A protocol client for tests: sends maps, receives maps, in either encoding."""

    def __init__(self, ws: ClientConnection, sub: str) -> None:
        self.ws, self.sub = ws, sub

    async def send(self, frame: Any) -> None:
        await self.ws.send(msgpack.packb(frame) if self.sub.endswith("msgpack")
                           else json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        # Bounded (a safety bound, not a timing assertion): a missing frame fails, never hangs.
        data = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S)
        if self.sub.endswith("msgpack"):
            assert isinstance(data, bytes)
            return msgpack.unpackb(data)
        assert isinstance(data, str)
        return json.loads(data)

    async def until(self, kind: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        frames = []
        while True:
            frame = await self.recv()
            if frame["type"] == kind:
                return frames, frame
            frames.append(frame)


def _open(gateway: Any, sub: str | None = "andes.v1.json", **kw: Any) -> Any:
    return connect(gateway.ws_url, subprotocols=[sub] if sub else None, open_timeout=5, **kw)


@pytest.mark.parametrize("sub", ENCODINGS)
async def test_a_paced_stream_then_another(gateway, upstream, sub) -> None:
    upstream.script = Script(tokens=[f"w{i} " for i in range(12)])
    async with _open(gateway, sub) as ws:
        assert ws.subprotocol == sub
        c = Conn(ws, sub)
        for ref in ("first", "second"):  # one connection, streams one after another
            await c.send({"type": "start", "messages": MSGS, "qoe": {"tds": 60}, "id": ref})
            started = await c.recv()
            assert started["type"] == "started" and started["id"] == ref
            assert started["pacing"] == "server" and started["qoe"]["tds"] == 60
            assert started["model"] == "test-model"
            deltas, done = await c.until("done")
            assert "".join(d["text"] for d in deltas) == "".join(f"w{i} " for i in range(12))
            assert [d["index"] for d in deltas] == sorted({d["index"] for d in deltas})
            assert sum(d["count"] for d in deltas) == 12 == done["tokens"]
            assert len(deltas) > 3  # paced: spread over several writes, not one burst
            assert done["finish_reason"] == "stop"
            assert done["usage"]["completion_tokens"] == 12
            assert 0 <= done["qoe"] <= 1 and done["ttft_s"] >= 0
    body = upstream.records[1].body
    assert body["vllm_xargs"]["andes_stream_id"] == started["stream_id"]
    assert body["vllm_xargs"]["andes_tds"] == 60


async def test_no_subprotocol_means_json(gateway, upstream) -> None:
    async with _open(gateway, None) as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS, "pacing": "off"})
        _, done = await c.until("done")
        assert done["tokens"] == 5


@pytest.mark.parametrize("sub", ENCODINGS)
async def test_client_pacing_acks_pace_pause_resume(gateway, upstream, sub) -> None:
    upstream.script = Script(tokens=[f"w{i} " for i in range(6)])
    async with _open(gateway, sub) as ws:
        c = Conn(ws, sub)
        await c.send({"type": "start", "messages": MSGS, "pacing": "client"})
        assert (await c.recv())["pacing"] == "client"
        deltas, _ = await c.until("done")
        assert sum(d["count"] for d in deltas) == 6
        # After the stream: control frames are out of order.
        for frame in ({"type": "ack", "consumed": 3}, {"type": "pause"}, {"type": "resume"},
                      {"type": "pace", "tds": 9}, {"type": "cancel"}):
            await c.send(frame)
            err = await c.recv()
            assert (err["type"], err["code"], err["fatal"]) == ("error", "out_of_order", False)
        # Acks and pace changes while a stream runs.
        upstream.script = Script(tokens=[f"w{i} " for i in range(6)], first_delay_s=0.1,
                                 gap_s=0.02)
        await c.send({"type": "start", "messages": MSGS, "pacing": "client"})
        await c.recv()
        await c.send({"type": "pace", "tds": 7.5})
        await c.send({"type": "pause"})
        await c.send({"type": "resume"})
        await c.send({"type": "ack", "consumed": 99})  # more than was sent
        err = await c.recv()
        assert err["code"] == "invalid_request" and not err["fatal"]
        got = 0
        while True:
            frame = await c.recv()
            if frame["type"] == "delta":
                got += frame["count"]
                await c.send({"type": "ack", "consumed": got})
            elif frame["type"] == "done":
                break
        assert frame["tokens"] == 6


async def test_cancel_aborts_the_engine_request(gateway, upstream) -> None:
    upstream.script = Script(tokens=[f"t{i} " for i in range(1000)], gap_s=0.01)
    async with _open(gateway) as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS, "qoe": {"tds": 100}})
        await c.recv()
        await c.until("delta")
        await c.send({"type": "cancel"})
        _, done = await c.until("done")
        assert done["finish_reason"] == "cancelled"
        await upstream.wait_for(lambda u: u.cancelled == 1)
        # The connection is still usable.
        upstream.script = Script()
        await c.send({"type": "start", "messages": MSGS, "pacing": "off"})
        _, done = await c.until("done")
        assert done["tokens"] == 5


async def test_disconnect_aborts_the_engine_request(gateway, upstream) -> None:
    upstream.script = Script(tokens=[f"t{i} " for i in range(1000)], gap_s=0.01)
    async with _open(gateway) as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS})
        await c.recv()
        await upstream.wait_for(lambda u: u.records and u.records[0].sent > 0)
    await upstream.wait_for(lambda u: u.cancelled == 1)


BAD_STARTS = [
    {"type": "start"},
    {"type": "start", "messages": "hi"},
    {"type": "start", "messages": MSGS, "qoe": {"tds": 0}},
    {"type": "start", "messages": MSGS, "qoe": {"ttft": "soon"}},
    {"type": "start", "messages": MSGS, "model": "unknown-model"},
    {"type": "start", "messages": MSGS, "max_tokens": 100_000},
    {"type": "start", "messages": MSGS, "temperature": "hot"},
    {"type": "start", "messages": MSGS, "pacing": "warp"},
]


@pytest.mark.parametrize("sub", ENCODINGS)
async def test_bad_starts_are_refused_and_the_connection_stays(gateway, upstream, sub) -> None:
    async with _open(gateway, sub) as ws:
        c = Conn(ws, sub)
        for frame in BAD_STARTS:
            await c.send(frame)
            err = await c.recv()
            assert (err["type"], err["code"], err["fatal"]) == ("error", "invalid_request", False)
        assert upstream.requests == 0
        await c.send({"type": "start", "messages": MSGS, "pacing": "off"})
        await c.recv()
        _, done = await c.until("done")
        assert done["tokens"] == 5


async def test_start_while_running_is_out_of_order(gateway, upstream) -> None:
    upstream.script = Script(tokens=["a"], first_delay_s=30)
    async with _open(gateway) as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS})
        await c.recv()
        await c.send({"type": "start", "messages": MSGS})
        err = await c.recv()
        assert err["code"] == "out_of_order" and not err["fatal"]
    await upstream.wait_for(lambda u: u.cancelled == 1)
    assert upstream.requests == 1


@pytest.mark.parametrize(("sub", "payload"), [
    ("andes.v1.json", "{not json"),
    ("andes.v1.json", "[1, 2]"),
    ("andes.v1.json", '{"type": "launch"}'),
    ("andes.v1.json", '{"no": "type"}'),
    ("andes.v1.json", b"\x81\xa4type\xa5pause"),  # binary on a JSON connection
    ("andes.v1.msgpack", b"\xc1"),
    ("andes.v1.msgpack", '{"type": "pause"}'),  # text on a msgpack connection
])
async def test_undecodable_frames_close_1007(gateway, upstream, sub, payload) -> None:
    async with _open(gateway, sub) as ws:
        await ws.send(payload)
        err = await Conn(ws, sub).recv()
        assert (err["code"], err["fatal"]) == ("bad_frame", True)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1007


async def test_oversized_frame_closes_1009(make_gateway) -> None:
    gw = await make_gateway(max_body_bytes=2048)
    async with _open(gw, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "messages": [
            {"role": "user", "content": "x" * 5000}]}))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009


async def test_api_key_on_the_socket(make_gateway, upstream) -> None:
    gw = await make_gateway(api_keys=("secret",))
    async with _open(gw) as ws:
        err = await Conn(ws, "andes.v1.json").recv()
        assert (err["code"], err["fatal"]) == ("unauthorized", True)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4401
    async with connect(gw.ws_url + "?api_key=secret") as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS, "pacing": "off"})
        _, done = await c.until("done")
    async with _open(gw, additional_headers={"Authorization": "Bearer secret"}) as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS, "pacing": "off"})
        _, done = await c.until("done")
    assert done["tokens"] == 5


async def test_engine_failure_is_an_error_frame(gateway, upstream) -> None:
    upstream.script = Script(tokens=["a ", "b ", "c "], error_after=1)
    async with _open(gateway) as ws:
        c = Conn(ws, "andes.v1.json")
        await c.send({"type": "start", "messages": MSGS, "pacing": "off"})
        await c.recv()
        _, err = await c.until("error")
        assert (err["code"], err["fatal"]) == ("upstream_error", False)
        upstream.script = Script(status=400, error={"message": "prompt too long"})
        await c.send({"type": "start", "messages": MSGS})
        err = await c.recv()
        assert err["code"] == "invalid_request" and "prompt too long" in err["message"]


async def test_extra_body_reaches_the_engine_and_reserved_keys_do_not(gateway, upstream) -> None:
    async with _open(gateway) as ws:
        c = Conn(ws, "andes.v1.json")
        for key in ("max_tokens", "stream", "messages", "qoe", "pacing", "model"):
            await c.send({"type": "start", "messages": MSGS, "extra_body": {key: 1}})
            err = await c.recv()
            assert (err["code"], err["fatal"]) == ("invalid_request", False)
            assert repr(key) in err["message"]
        await c.send({"type": "start", "messages": MSGS, "extra_body": ["ignore_eos"]})
        assert (await c.recv())["code"] == "invalid_request"
        assert upstream.requests == 0  # nothing refused reached the engine
        await c.send({"type": "start", "messages": MSGS, "pacing": "off", "max_tokens": 5,
                      "extra_body": {"ignore_eos": True, "min_tokens": 5, "cache_salt": "s1",
                                     "vllm_xargs": {"mine": 1}}})
        started = await c.recv()
        _, done = await c.until("done")
        assert done["tokens"] == 5
    body = upstream.records[0].body
    assert body["ignore_eos"] is True and body["min_tokens"] == 5 and body["cache_salt"] == "s1"
    assert body["max_tokens"] == 5 and body["messages"] == MSGS and body["stream"] is True
    assert "extra_body" not in body
    # The client's vllm_xargs is kept beside the gateway's own keys.
    assert body["vllm_xargs"]["mine"] == 1
    assert body["vllm_xargs"]["andes_stream_id"] == started["stream_id"]


async def test_a_start_waiting_in_the_queue_can_be_cancelled(make_gateway, upstream) -> None:
    gw = await make_gateway(max_upstream_streams=1, parking="off")
    upstream.script = Script(tokens=[f"t{i} " for i in range(200)], gap_s=0.01)
    async with _open(gw) as first, _open(gw) as second:
        a, b = Conn(first, "andes.v1.json"), Conn(second, "andes.v1.json")
        await a.send({"type": "start", "messages": MSGS, "qoe": {"tds": 100}})
        await a.until("delta")
        await b.send({"type": "start", "messages": MSGS, "qoe": {"tds": 100}})  # queued
        # The connection still reads frames while its start waits: a pace is kept for the
        # stream, a cancel takes it out of the queue.
        await b.send({"type": "pace", "tds": 5.0})
        await b.send({"type": "cancel"})
        _, done = await a.until("done")
        assert done["finish_reason"] in ("stop", "length")
    assert upstream.requests == 1  # the cancelled one never reached the engine
