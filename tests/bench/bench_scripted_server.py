"""A small OpenAI-compatible streaming server whose timing and failures follow a script.

Each request's behaviour comes from ``script(body) -> Script``; the server records what it received
and when it sent each token (on ``time.perf_counter``, the load generator's clock: both run in the
test's process), so tests compare the client's measurements with what really happened.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Script:
    """How the server answers one request."""

    tokens: int | None = None  # tokens to stream (None: the request's max_tokens)
    first_delay_s: float = 0.0  # before the first token
    interval_s: float = 0.0  # between tokens
    tokens_per_chunk: int = 1  # several tokens per SSE event (continuous usage tells the count)
    status: int = 200  # a non-200 status answers with an OpenAI error object instead
    error_after: int | None = None  # send an error event after this many tokens
    drop_after: int | None = None  # close the connection after this many tokens (no [DONE])
    stall_s: float = 0.0  # sleep this long before the first byte of the body


@dataclass
class Received:
    """One request as the server saw it."""

    path: str
    body: dict[str, Any]
    received_clock_s: float
    token_clock_s: list[float] = field(default_factory=list)  # when each token was written


class ScriptedServer:
    """``async with ScriptedServer(script) as server:`` → ``server.url``."""

    def __init__(self, script: Callable[[dict[str, Any]], Script] | Script | None = None) -> None:
        self._script = script if callable(script) else (lambda _body, s=script or Script(): s)
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "scripted", "object": "model"}]}
        )

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        rec = Received(request.path, body, time.perf_counter())
        self.received.append(rec)
        script = self._script(body)
        if script.status != 200:
            return web.json_response(
                {"error": {"message": f"scripted failure {script.status}", "type": "x"}},
                status=script.status,
            )
        chat = request.path.endswith("/chat/completions")
        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if script.stall_s:
            await asyncio.sleep(script.stall_s)
        total = script.tokens if script.tokens is not None else int(body["max_tokens"])
        sent = 0
        await asyncio.sleep(script.first_delay_s)
        while sent < total:
            if script.error_after is not None and sent >= script.error_after:
                await _event(resp, {"error": {"message": "scripted error event", "code": 500}})
                return resp
            if script.drop_after is not None and sent >= script.drop_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            n = min(script.tokens_per_chunk, total - sent)
            text = "tok " * n
            sent += n
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            if chat:
                choice["delta"] = {"content": text}
            else:
                choice["text"] = text
            if sent == total:
                choice["finish_reason"] = "length"
            chunk: dict[str, Any] = {"id": "x", "choices": [choice]}
            if continuous:
                chunk["usage"] = {"prompt_tokens": 3, "completion_tokens": sent}
            await _event(resp, chunk)
            rec.token_clock_s.extend([time.perf_counter()] * n)
            if sent < total:
                await asyncio.sleep(script.interval_s)
        await _event(resp, {"id": "x", "choices": [],
                            "usage": {"prompt_tokens": 3, "completion_tokens": sent}})  # fmt: skip
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def _event(resp: web.StreamResponse, data: dict[str, Any]) -> None:
    await resp.write(f"data: {json.dumps(data)}\n\n".encode())
