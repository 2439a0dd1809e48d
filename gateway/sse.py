"""Server-sent events: a transport-free parser, and the few bytes the gateway writes. Sans-I/O.

The parser follows the WHATWG event-stream rules that matter for LLM engines: lines end in
``\\n``, ``\\r\\n`` or ``\\r`` (possibly split across reads), ``:`` starts a comment (keep-alives),
several ``data:`` lines join with ``\\n``, one optional space after the colon is dropped, a blank
line dispatches the event, and an event with no data is dropped. Bytes are decoded only at line
boundaries so a UTF-8 character split across reads is never mangled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["KEEPALIVE", "SSEEvent", "SSEParser", "data_event"]

KEEPALIVE = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """``feed(bytes) -> [SSEEvent]``; keeps partial lines between calls."""

    def __init__(self, max_line_bytes: int = 1 << 24) -> None:
        self._buf = bytearray()
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._max_line = max_line_bytes
        self._first = True
        self._cr_pending = False  # a chunk ended in "\r": a following "\n" belongs to it

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._cr_pending and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._cr_pending = False
        self._buf += chunk
        events: list[SSEEvent] = []
        start = 0
        buf = self._buf
        while True:
            nl = buf.find(b"\n", start)
            cr = buf.find(b"\r", start, nl if nl >= 0 else len(buf))
            if cr >= 0:
                end, nxt = cr, cr + 1
                if nxt < len(buf) and buf[nxt] == 0x0A:
                    nxt += 1
                elif nxt == len(buf):
                    self._cr_pending = True
            elif nl >= 0:
                end, nxt = nl, nl + 1
            else:
                break
            event = self._line(bytes(buf[start:end]))
            if event is not None:
                events.append(event)
            start = nxt
        del buf[:start]
        if len(buf) > self._max_line:
            raise ValueError(f"an SSE line longer than {self._max_line} bytes")
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message", self._id)
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def data_event(obj: Any) -> bytes:
    """One ``data:`` event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
