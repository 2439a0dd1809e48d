"""The header that tells a gateway this vLLM runs the Andes scheduler (``andes engine`` adds it).

vLLM's API server takes ASGI middleware by import path (``--middleware``); this one adds
:data:`slack.discovery.SCHEDULER_HEADER` to the start of every HTTP response. A gateway reads it
on its ``GET /v1/models`` and leaves scheduling to the engine (``gateway/dispatch.py``), on any
host and whether or not the slack channel is on. Without it a gateway that could not find the
slack channel took ``andes engine`` for an engine it does not control and queued streams in
front of a scheduler that would have ordered them itself.

Pure ASGI (no ``BaseHTTPMiddleware``): it touches one message per response and never the body,
so a streamed response passes through it as it does without it. It imports nothing of vLLM.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from slack.discovery import SCHEDULER_HEADER

__all__ = ["SchedulerHeader"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HEADER = (SCHEDULER_HEADER.lower().encode("latin-1"), b"andes")


class SchedulerHeader:
    """ASGI middleware: ``X-Andes-Scheduler: andes`` on every HTTP response."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), _HEADER]
            await send(message)

        await self.app(scope, receive, send_with_header)
