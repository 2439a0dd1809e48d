"""The Python streaming client (gateway/client.py) and ``andes chat`` against a real gateway in
front of the scripted engine."""

from __future__ import annotations

import argparse
import asyncio
import io

import pytest
from support.wait import until

from bench.scripted_engine import Script
from gateway import chat
from gateway.auth import GATEWAY
from gateway.client import (
    ConnectionLost,
    StreamFailed,
    split_tokens,
    stream,
    stream_sync,
)

MSGS = [{"role": "user", "content": "hi"}]


def words(n: int) -> list[str]:
    return [f"w{k} " for k in range(n)]


async def test_streams_at_the_readers_pace_and_acks(gateway, upstream, spy) -> None:
    n, tds = 30, 20.0
    upstream.script = Script(tokens=words(n))  # one burst from the engine
    loop = asyncio.get_running_loop()
    times: list[tuple[float, str]] = []
    async with stream(gateway.ws_url, MSGS, qoe={"tds": tds}) as s:
        async for text in s:
            times.append((loop.time(), text))
    r = s.result
    assert r is not None
    assert "".join(t for _, t in times) == "".join(words(n)) == r.text
    assert r.tokens == n and r.finish_reason == "stop" and r.stream_id
    assert 0 <= r.qoe <= 1 and 0 <= r.shown_qoe <= 1
    # Paced locally: never faster than the reader (a lower bound load can only lengthen).
    assert times[-1][0] - times[0][0] >= 0.8 * (n - 1) / tds
    assert len(times) >= n // 2  # handed out progressively, not in one piece
    body = upstream.records[0].body
    assert body["vllm_xargs"]["andes_tds"] == tds
    acks = [a for sid, name, a in spy if name == "ack" and sid == r.stream_id]
    assert acks == sorted(acks) and all(0 < a <= n for a in acks)  # type: ignore[operator]
    assert r.acks == len(acks)


async def test_acks_reach_the_gateway_while_the_engine_streams(gateway, upstream, spy) -> None:
    upstream.script = Script(tokens=words(24), gap_s=0.05)  # 20 tok/s for 1.2 s
    async with stream(gateway.ws_url, MSGS, qoe={"tds": 40}, ack_interval_s=0.1) as s:
        async for _ in s:
            pass
    acks = [a for sid, name, a in spy if name == "ack"]
    assert len(acks) >= 3, spy
    assert s.result is not None and s.result.acks >= 3


async def test_pause_resume_and_pace_reach_the_gateway(gateway, upstream, spy) -> None:
    upstream.script = Script(tokens=words(40), gap_s=0.02)
    gw = gateway.app[GATEWAY]
    async with stream(gateway.ws_url, MSGS, qoe={"tds": 50}) as s:
        got = 0
        async for _ in s:
            got += 1
            if got == 3:
                await s.pause()
                await until(lambda: "pause" in spy.names(), "the gateway read the pause frame")
                live = gw.table.streams[s.stream_id]
                assert live.slack_record(asyncio.get_running_loop().time(), 0.0).paused is True
                await s.resume()
                await s.set_pace(80)
    names = [n for _, n, _ in spy if n not in ("ack", "cancel")]  # cancel: the gateway's cleanup
    assert names == ["pause", "resume", "set_pace"]
    assert s.result is not None and s.result.tokens == 40


async def test_a_pause_that_outlasts_the_stream_resumes_where_it_stopped(gateway, upstream) -> None:
    # The tab is hidden while the gateway sends the rest and its done frame: the iteration waits
    # for resume() (it used to fail as a stalled stream), then hands out everything.
    upstream.script = Script(tokens=words(12))
    arrivals: list[tuple[float, int]] = []
    resumed: list[asyncio.Task[None]] = []
    async with stream(gateway.ws_url, MSGS, qoe={"tds": 20},
                      on_delta=lambda now, n: arrivals.append((now, n))) as s:
        text = []
        async for piece in s:
            text.append(piece)
            if len(text) == 1:
                await s.pause()
                done = await s.wait_received()  # the whole stream is here; the reader is away
                assert s.received_all and done.tokens == 12
                asyncio.get_running_loop().call_later(
                    0.05, lambda: resumed.append(asyncio.ensure_future(s.resume())))
    assert resumed and len(text) > 2  # handed out after the return, piece by piece
    assert "".join(text) == "".join(words(12))
    assert sum(n for _, n in arrivals) == 12 and arrivals == sorted(arrivals)
    assert s.result is not None and s.result.tokens == 12


async def test_extra_body_reaches_the_engine(gateway, upstream) -> None:
    async with stream(gateway.ws_url, MSGS, qoe={"tds": 100},
                      extra_body={"ignore_eos": True, "min_tokens": 3}) as s:
        async for _ in s:
            pass
    body = upstream.records[0].body
    assert body["ignore_eos"] is True and body["min_tokens"] == 3
    with pytest.raises(ValueError, match="extra_body may not set 'stream'"):
        stream(gateway.ws_url, MSGS, extra_body={"stream": False})


async def test_breaking_out_cancels_the_engine_request(gateway, upstream, spy) -> None:
    upstream.script = Script(tokens=words(200), gap_s=0.05)
    async with stream(gateway.ws_url, MSGS, qoe={"tds": 50}) as s:
        async for _ in s:
            break
    await upstream.wait_for(lambda u: u.cancelled == 1)
    assert ("cancelled" in [a for _, n, a in spy if n == "cancel"])
    assert s.result is None


async def test_task_cancellation_sends_cancel(gateway, upstream) -> None:
    upstream.script = Script(tokens=words(200), gap_s=0.05)
    started = asyncio.Event()

    async def consume() -> None:
        async with stream(gateway.ws_url, MSGS, qoe={"tds": 50}) as s:
            async for _ in s:
                started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await upstream.wait_for(lambda u: u.cancelled == 1)


async def test_gateway_errors_raise_clear_exceptions(gateway, upstream) -> None:
    with pytest.raises(StreamFailed) as err:
        async with stream(gateway.ws_url, MSGS, model="no-such-model") as s:
            async for _ in s:
                pass
    assert err.value.code == "invalid_request" and "no-such-model" in err.value.message

    upstream.script = Script(tokens=words(10), error_after=4)
    with pytest.raises(StreamFailed) as err:
        async with stream(gateway.ws_url, MSGS, qoe={"tds": 100}) as s:
            async for _ in s:
                pass
    assert err.value.code == "upstream_error"


async def test_connection_failures_raise_connection_lost(unused_tcp_port) -> None:
    with pytest.raises(ConnectionLost, match="cannot connect"):
        async with stream(f"ws://127.0.0.1:{unused_tcp_port}/v1/stream", MSGS) as s:
            async for _ in s:
                pass


async def test_bad_requests_fail_before_connecting() -> None:
    with pytest.raises(ValueError, match=r"qoe\.tds .* got 0"):
        stream("ws://127.0.0.1:9/v1/stream", MSGS, qoe={"tds": 0})
    with pytest.raises(ValueError, match="messages"):
        stream("ws://127.0.0.1:9/v1/stream", [])


async def test_msgpack_subprotocol(gateway, upstream) -> None:
    upstream.script = Script(tokens=["a", "b", " c"])
    async with stream(gateway.ws_url, MSGS, qoe={"tds": 100},
                      subprotocol="andes.v1.msgpack") as s:
        text = "".join([t async for t in s])
        text += "".join([t async for t in s])  # an ended stream stays ended: no reconnection
    assert text == "ab c"
    assert upstream.requests == 1


def test_split_tokens_matches_the_js_client() -> None:
    assert split_tokens("hello world", 3) == ["hell", "o w", "orld"]
    assert split_tokens("xy", 4) == ["x", "", "y", ""]
    assert "".join(split_tokens("abcdefg", 5)) == "abcdefg"


async def test_stream_sync_and_andes_chat(gateway, upstream) -> None:
    upstream.script = Script(tokens=["Hi", " there", "."])

    def sync_part() -> tuple[str, object, str, int]:
        s = stream_sync(gateway.ws_url, MSGS, qoe={"tds": 100})
        text = "".join(s)
        out = io.StringIO()
        parser = argparse.ArgumentParser()
        chat.add_arguments(parser)
        args = parser.parse_args(["--url", gateway.ws_url, "--tds", "100", "--prompt", "hello",
                                  "--prompt", "again"])
        rc = chat.run(args, stdin=io.StringIO(""), out=out)
        return text, s.result, out.getvalue(), rc

    text, result, printed, rc = await asyncio.to_thread(sync_part)
    assert text == "Hi there."
    assert result is not None and result.tokens == 3  # type: ignore[attr-defined]
    assert rc == 0
    assert printed.count("Hi there.") == 2 and printed.count("[QoE ") == 2
    # The second turn carried the conversation.
    assert [m["role"] for m in upstream.records[-1].body["messages"]] == [
        "user", "assistant", "user"]


async def test_stream_sync_break_cancels(gateway, upstream) -> None:
    upstream.script = Script(tokens=words(200), gap_s=0.05)

    def sync_part() -> None:
        for _ in stream_sync(gateway.ws_url, MSGS, qoe={"tds": 50}):
            break

    await asyncio.to_thread(sync_part)
    await upstream.wait_for(lambda u: u.cancelled == 1)
