"""A fuzz corpus for the slack channel (issue 12, item 8): mutated slack frames never raise
anything but :class:`SlackFrameError` from the decoder, and a live receiver counts and drops
every bad one and still stores the next good batch. Example counts: a quarter of the hypothesis
profile's ``max_examples``."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from core.slack import SlackRecord
from slack.receiver import SlackServer, SlackServerConfig
from slack.wire import SlackFrameError, decode_batch, encode_batch

FUZZ = settings(max_examples=max(10, settings.default.max_examples // 4), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(),
                  st.text(max_size=300), st.binary(max_size=80))
RECORD = st.fixed_dictionaries({}, optional={k: VALUE for k in (
    "id", "delivered", "consumed", "tds", "paused", "t")})
GOOD_RECORD = {"id": "s1", "delivered": 10, "consumed": 4, "tds": 4.0, "paused": False, "t": 1.0}
FRAME = st.fixed_dictionaries(
    {"type": st.sampled_from(["slack", "hello", "challenge"]) | VALUE},
    optional={"v": st.just(1) | VALUE, "sent": st.floats() | VALUE,
              "records": st.lists(RECORD | st.just(GOOD_RECORD) | VALUE, max_size=5) | VALUE})


def _pack(frame: Any) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


@FUZZ
@given(frame=FRAME)
@example(frame={"type": "slack", "v": 1, "sent": math.nan, "records": []})
@example(frame={"type": "slack", "v": 1, "sent": 1.0, "records": [{**GOOD_RECORD, "id": ""}]})
@example(frame={"type": "slack", "v": 1, "sent": 1.0,
                "records": [{**GOOD_RECORD, "consumed": 11}]})
def test_the_decoder_refuses_with_its_own_error(frame: dict[str, Any]) -> None:
    try:
        data = _pack(frame)
    except (OverflowError, ValueError, TypeError):
        return
    with contextlib.suppress(SlackFrameError):  # any other exception fails the case
        decode_batch(data)


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"\x91" * 5000 + b"\xc0")
@example(data=b"\xdd\xff\xff\xff\xff")  # an array that claims 4 G entries
def test_raw_bytes(data: bytes) -> None:
    with contextlib.suppress(SlackFrameError):  # any other exception fails the case
        decode_batch(data)


@pytest.fixture(scope="module")
def server() -> Iterator[SlackServer]:
    s = SlackServer(SlackServerConfig(frames_per_s=1e6, burst_frames=1e6, idle_timeout_s=30))
    s.start()
    yield s
    s.stop()


@FUZZ
@given(frames=st.lists(FRAME | st.binary(max_size=100), min_size=1, max_size=5))
def test_a_live_receiver_drops_bad_frames_and_keeps_serving(
        server: SlackServer, frames: list[Any]) -> None:
    async def case() -> None:
        before = server.counters()
        sent = 0
        async with connect(server.url) as ws:
            for frame in frames:
                try:
                    data = frame if isinstance(frame, bytes) else _pack(frame)
                except (OverflowError, ValueError, TypeError):
                    continue
                await ws.send(data)
                sent += 1
            good = SlackRecord("alive", 3, 1, 4.0, False, 1.0)
            await ws.send(encode_batch([good], 1.0))
            for _ in range(500):  # a safety bound: the receiver works in its own thread
                after = server.counters()
                accounted = sum(after[k] - before[k] for k in ("frames", "malformed",
                                                               "oversized", "flooded"))
                if accounted >= sent + 1 and server.fresh("alive", 1e18, 1e30):
                    break
                await asyncio.sleep(0.01)
        assert accounted >= sent + 1, (before, after, sent)
        assert server.fresh("alive", 1e18, 1e30) is not None
    asyncio.run(case())
