"""The Python protocol definition against the shared golden frames, and its encodings."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from gateway import protocol as p

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "golden" / "frames.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=[c["name"] for c in GOLDEN])
def test_golden_frame(case: dict) -> None:
    parse = p.parse_client_frame if case["direction"] == "client->gateway" else p.parse_server_frame
    if case["valid"]:
        frame = parse(case["frame"])
        assert frame.type == case["frame"]["type"]
        # Round trip: encoding the parsed frame and parsing it again gives the same frame.
        for sub in p.SUBPROTOCOLS:
            assert parse(p.decode(p.encode(frame, sub), sub)) == frame
    else:
        with pytest.raises(p.FrameError) as info:
            parse(case["frame"])
        assert info.value.code == case["error_code"]
        assert info.value.fatal == (case["error_code"] == "bad_frame")


def test_golden_covers_every_frame_type() -> None:
    types = {c["frame"]["type"] for c in GOLDEN if c["valid"]}
    assert types == {"start", "ack", "pace", "pause", "resume", "cancel",
                     "started", "delta", "done", "error"}


def test_error_messages_quote_the_bad_value() -> None:
    with pytest.raises(p.FrameError, match="-4"):
        p.parse_client_frame({"type": "start", "messages": [{"role": "user", "content": "x"}],
                              "qoe": {"tds": -4}})


@pytest.mark.parametrize("data", ["{", "nan", "[1,", "NaN", '{"type": NaN}'])
def test_undecodable_json_is_bad_frame(data: str) -> None:
    with pytest.raises(p.FrameError) as info:
        p.parse_client_frame(p.decode(data, p.JSON_SUBPROTOCOL))
    assert info.value.code == "bad_frame" and info.value.fatal


def test_encoding_mismatch_is_bad_frame() -> None:
    with pytest.raises(p.FrameError, match="binary"):
        p.decode(b'{"type":"pause"}', p.JSON_SUBPROTOCOL)
    with pytest.raises(p.FrameError, match="text"):
        p.decode('{"type":"pause"}', p.MSGPACK_SUBPROTOCOL)
    with pytest.raises(p.FrameError):
        p.decode(b"\xc1", p.MSGPACK_SUBPROTOCOL)


def test_msgpack_and_json_carry_the_same_map() -> None:
    frame = p.Done("stop", p.Usage(1, 2, 3), 0.5, 0.25, 2)
    as_json = json.loads(p.encode(frame, p.JSON_SUBPROTOCOL))
    as_msgpack = msgpack.unpackb(p.encode(frame, p.MSGPACK_SUBPROTOCOL))
    assert as_json == as_msgpack == {
        "type": "done", "finish_reason": "stop",
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "qoe": 0.5, "ttft_s": 0.25, "tokens": 2,
    }
