"""A real OpenAI-compatible engine for tests, whose token timing is scripted per request.

It streams chat/completions and completions as SSE (with ``stream_options.include_usage``), lists
models, and records what reached it: every request body, and which requests were cancelled (the
client closed the connection before the end). Tests set :attr:`ScriptedUpstream.script` (used for
every request) or push scripts onto :attr:`ScriptedUpstream.queue` (one per request).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Script:
    """How the engine answers one request."""

    tokens: list[str] = field(default_factory=lambda: [f"t{i} " for i in range(5)])
    first_delay_s: float = 0.0  # before the first token (a slow start)
    gap_s: float = 0.0  # between tokens (0 = one burst)
    stall_after: int | None = None  # after this many tokens, wait stall_s
    stall_s: float = 0.0
    status: int = 200  # anything else: answer with this status and `error`
    error: dict[str, Any] | None = None
    error_after: int | None = None  # after this many tokens, send an error event and stop
    drop_after: int | None = None  # after this many tokens, close the connection abruptly
    finish_reason: str = "stop"
    stamp: bool = False  # each token's text is its emission time (time.monotonic(), benchmarks)


@dataclass
class Record:
    body: dict[str, Any]
    path: str
    headers: dict[str, str]
    sent: int = 0
    finished: bool = False
    cancelled: bool = False


class ScriptedUpstream:
    """Start with :meth:`start` (binds 127.0.0.1 on a free port), stop with :meth:`stop`."""

    def __init__(self, models: tuple[str, ...] = ("test-model",), owned_by: str = "vllm") -> None:
        self.models = models
        self.owned_by = owned_by
        self.script = Script()
        self.queue: list[Script] = []
        self.records: list[Record] = []
        self.changed = asyncio.Event()  # set on every record change
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def cancelled(self) -> int:
        return sum(r.cancelled for r in self.records)

    async def wait_for(self, predicate: Any, timeout_s: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds (a safety timeout, not a timed assertion)."""
        async def loop() -> None:
            while not predicate(self):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout_s)

    def _touch(self) -> None:
        self.changed.set()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def keep_records(self, keep: bool) -> None:
        """Benchmarks turn recording off so memory does not grow with the request count."""
        self._keep = keep

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": self.owned_by}
            for m in self.models]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = Record(body, request.path, dict(request.headers))
        if getattr(self, "_keep", True):
            self.records.append(record)
        self._touch()
        script = self.queue.pop(0) if self.queue else self.script
        if script.status != 200:
            return web.json_response({"error": script.error or {
                "message": "scripted failure", "type": "BadRequestError", "param": None,
                "code": script.status}}, status=script.status)
        chat = request.path.endswith("chat/completions")
        base = {"id": "up-1", "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0, "model": body.get("model")}

        def chunk(text: str | None, finish: str | None = None) -> bytes:
            if chat:
                delta = {"content": text} if text is not None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish}
            return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        try:
            await resp.prepare(request)
            if chat:
                await resp.write(b"data: " + json.dumps({**base, "choices": [{
                    "index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None}]}).encode() + b"\n\n")
            await asyncio.sleep(script.first_delay_s)
            for i, tok in enumerate(script.tokens):
                if i == script.error_after:
                    await resp.write(b'data: {"error": {"message": "scripted mid-stream error",'
                                     b' "type": "InternalServerError", "code": 500}}\n\n')
                    await resp.write(b"data: [DONE]\n\n")
                    record.finished = True
                    return resp
                if i == script.drop_after:
                    request.transport.close()  # type: ignore[union-attr]
                    record.finished = True
                    return resp
                if i == script.stall_after:
                    await asyncio.sleep(script.stall_s)
                elif i and script.gap_s:
                    await asyncio.sleep(script.gap_s)
                await resp.write(chunk(f"{time.monotonic():.6f} " if script.stamp else tok))
                record.sent += 1
            await resp.write(chunk(None, script.finish_reason))
            n = len(script.tokens)
            await resp.write(b"data: " + json.dumps({**base, "choices": [], "usage": {
                "prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}}).encode()
                + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            record.finished = True
        except (asyncio.CancelledError, ConnectionError):
            record.cancelled = True
            raise
        finally:
            self._touch()
        return resp


def main() -> None:
    """``python tests/gateway/scripted_upstream.py TOKENS GAP_S FIRST_DELAY_S [stamp]``: serve a
    fixed script on a free port (printed on stdout) until killed — for benchmarks."""
    import sys

    async def run() -> None:
        up = ScriptedUpstream()
        up.keep_records(False)
        n, gap, first = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
        up.script = Script(tokens=[f"w{i} " for i in range(n)], gap_s=gap, first_delay_s=first,
                           stamp="stamp" in sys.argv[4:])
        print(await up.start(), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
