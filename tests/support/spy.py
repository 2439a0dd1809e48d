"""A spy on the gateway's streams: records the control calls that reached them, in order.

It wraps the real methods (they still run), so a test sees what the gateway received over a real
connection — the client's acks, pace changes, pause/resume and cancels — without faking anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.stream import Stream

__all__ = ["StreamSpy"]

Call = tuple[str, str, Any]  # (stream id, method, its first argument or None)


class StreamSpy:
    """Iterates over the calls as ``(stream id, method, argument)``."""

    METHODS = ("ack", "pause", "resume", "set_pace", "cancel")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Call] = []
        for name in self.METHODS:
            real = getattr(Stream, name)

            def wrapper(stream: Stream, *args: Any, _real: Any = real, _name: str = name) -> Any:
                self.calls.append((stream.id, _name, args[0] if args else None))
                return _real(stream, *args)

            monkeypatch.setattr(Stream, name, wrapper)

    def __iter__(self) -> Iterator[Call]:
        return iter(self.calls)

    def __repr__(self) -> str:
        return f"StreamSpy({self.calls!r})"

    def names(self) -> list[str]:
        """The methods called, in order."""
        return [name for _, name, _ in self.calls]

    def of(self, stream_id: str, name: str) -> list[Any]:
        """The arguments of every ``name`` call on stream ``stream_id``."""
        return [arg for sid, n, arg in self.calls if sid == stream_id and n == name]
