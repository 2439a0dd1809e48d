"""A transport-free parser for server-sent events (the ``text/event-stream`` of OpenAI streaming).

Feed it lines as they arrive (``feed_line``); it returns the data of each event completed by that
line. Only what OpenAI-compatible servers send is handled: ``data:`` fields (several are joined with
newlines, as the spec says), comments (``:``-prefixed, e.g. keep-alive pings) and the other fields
(``event``, ``id``, ``retry``), which are ignored. Blank lines end events. After the stream ends,
:meth:`SSEParser.flush` returns an event left without its closing blank line.
"""

from __future__ import annotations

__all__ = ["SSEParser"]


class SSEParser:
    """Accumulates ``data:`` lines into events (the WHATWG event-stream rules, data only)."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed_line(self, line: str) -> str | None:
        """One line without or with its line ending; returns an event's data when one completes."""
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment / keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        return None

    def flush(self) -> str | None:
        """End the current event, if it has data."""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data.clear()
        return data
