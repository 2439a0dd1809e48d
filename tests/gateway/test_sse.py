"""The SSE parser on the shapes engines actually send."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.sse import SSEEvent, SSEParser

STREAM = (b"\xef\xbb\xbf: keep-alive\n\ndata: {\"a\": 1}\n\nevent: x\ndata: line1\ndata: line2\n"
          b"id: 7\n\ndata:nospace\r\n\r\ndata: caf\xc3\xa9\r\rdata: [DONE]\n\n")
EXPECTED = [SSEEvent('{"a": 1}'), SSEEvent("line1\nline2", "x", "7"),
            SSEEvent("nospace", id="7"), SSEEvent("café", id="7"), SSEEvent("[DONE]", id="7")]


def test_whole_stream() -> None:
    assert SSEParser().feed(STREAM) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    parser, events, last = SSEParser(), [], 0
    for cut in [*sorted(set(cuts)), len(STREAM)]:
        events += parser.feed(STREAM[last:cut])
        last = cut
    assert events == EXPECTED


def test_data_lines_join_and_an_unterminated_event_is_not_dispatched() -> None:
    # The shapes the load generator's own parser was tested on, before it used this one.
    p = SSEParser()
    lines = [b": ping\n", b"event: message\n", b'data: {"a":\n', b"data:1}\r\n", b"\n",
             b"data: [DONE]\n", b"\n"]  # fmt: skip
    assert [e.data for line in lines for e in p.feed(line)] == ['{"a":\n1}', "[DONE]"]
    # WHATWG: an event without its closing blank line is discarded when the stream ends.
    assert p.feed(b"data: tail") == []
