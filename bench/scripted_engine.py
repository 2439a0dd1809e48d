"""A real OpenAI-compatible engine whose token timing and failures follow a script.

An aiohttp server on 127.0.0.1 that streams ``/v1/chat/completions`` and ``/v1/completions`` as
server-sent events the way vLLM does (a role chunk first on chat, one chunk per token or per
``tokens_per_chunk``, a finish chunk, the ``usage`` chunk, ``[DONE]``; running usage in every
chunk when the request asks for ``stream_options.continuous_usage_stats``) and lists its models.
Each request is answered by a :class:`Script`: how many tokens, how fast, and how it fails. Like
vLLM it also streams what a request asks for beside one choice's text: ``n`` choices
(interleaved, choice *i* > 0 marking its tokens ``#i``), ``logprobs``/``top_logprobs`` with every
token (made-up numbers), and, when scripted, reasoning deltas before the text
(``reasoning_content``) and tool-call deltas after it (the arguments in fragments).

It records what reached it (:attr:`ScriptedEngine.records`: body, headers, when it arrived and
when each token was written, whether it finished or the client went away) so that tests compare
what a client measured with what really happened. Both run in one process in the tests, so the
token times are on the load generator's clock (:func:`time.perf_counter`).

The gateway tests, the load generator's tests, the browser test and the gateway benchmarks all
use it: in-process (``async with ScriptedEngine(script) as engine``) or as a process
(``python -m bench.scripted_engine --tokens 64 --gap-s 0.02``, which prints its URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Record", "Script", "ScriptedEngine"]


@dataclass(frozen=True)
class Script:
    """How the engine answers one request."""

    # The tokens' texts; a count (each token is "tok "); None: as many as the request's max_tokens.
    tokens: Sequence[str] | int | None = ("t0 ", "t1 ", "t2 ", "t3 ", "t4 ")
    first_delay_s: float = 0.0  # before the first token (after the role chunk: a slow start)
    gap_s: float = 0.0  # between chunks (0: one burst)
    tokens_per_chunk: int = 1  # several tokens per event (continuous usage tells the count)
    stall_after: int | None = None  # after this many tokens, wait stall_s once
    stall_s: float = 0.0
    status: int = 200  # anything else: answer with this status and an OpenAI error object
    error: dict[str, Any] | None = None  # that error object (default: a "scripted failure")
    error_after: int | None = None  # after this many tokens, send an error event and [DONE]
    drop_after: int | None = None  # after this many tokens, close the connection (no [DONE])
    finish_reason: str | None = None  # None: "length" when tokens is None, else "stop"
    stamp: bool = False  # each token's text is its emission time (time.monotonic(): benchmarks)
    line_ending: str = "\n"  # of the event stream: "\n", "\r\n" or "\r" (all valid SSE)
    usage: bool = True  # send the final usage chunk (llama-cpp-python's server sends none)
    done_without_finish: bool = False  # end with [DONE] and no finish_reason (an interrupt)
    reasoning: Sequence[str] = ()  # chat: reasoning_content deltas before the first token
    # chat: tool calls (name, JSON arguments) streamed after the text; finish "tool_calls"
    tool_calls: Sequence[tuple[str, str]] = ()

    def texts(self, body: dict[str, Any]) -> list[str]:
        """The tokens this script streams for a request with ``body``."""
        if self.tokens is None:
            return ["tok "] * int(body.get("max_tokens") or 16)
        if isinstance(self.tokens, int):
            return ["tok "] * self.tokens
        return list(self.tokens)

    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        if self.tool_calls:
            return "tool_calls"
        return "length" if self.tokens is None else "stop"


@dataclass
class Record:
    """One request as the engine saw it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_clock_s: float  # time.perf_counter() when the request arrived
    token_clock_s: list[float] = field(default_factory=list)  # when each token was written
    finished: bool = False  # the script ran to its end (a scripted failure included)
    cancelled: bool = False  # the client closed the connection before the end

    @property
    def sent(self) -> int:
        """Tokens written so far."""
        return len(self.token_clock_s)


ScriptSource = Script | Callable[[dict[str, Any]], Script]


class ScriptedEngine:
    """The engine. :meth:`start` binds 127.0.0.1 on a free port (``url``), :meth:`stop` ends it.

    :attr:`script` answers every request: a :class:`Script`, or a function of the request body
    returning one. Scripts pushed onto :attr:`queue` answer the next requests first, one each.
    """

    def __init__(self, script: ScriptSource | None = None, *,
                 models: tuple[str, ...] = ("test-model",), owned_by: str = "vllm",
                 keep_records: bool = True, backlog: int = 128,
                 models_between_generations: bool = False) -> None:
        self.script: ScriptSource = script if script is not None else Script()
        self.queue: list[Script] = []
        self.models = models
        self.owned_by = owned_by
        self.records: list[Record] = []
        self.url = ""
        self._keep_records = keep_records  # benchmarks turn it off: memory stays flat
        self._backlog = backlog
        # As llama-cpp-python's server: GET /v1/models waits while any stream is generating.
        self.models_between_generations = models_between_generations
        self._generating = 0
        self._changed = asyncio.Event()  # set whenever a record changes
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=0.5)  # fmt: skip
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=self._backlog)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what reached it ------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def cancelled(self) -> int:
        return sum(r.cancelled for r in self.records)

    async def wait_for(self, predicate: Callable[[ScriptedEngine], object],
                       timeout_s: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds (a safety bound, not a timed assertion)."""
        async def changes() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(changes(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"the scripted engine never reached the awaited state in "
                                 f"{timeout_s:g} s; records: {self.records}") from None

    # -- handlers -------------------------------------------------------------------------------

    async def _models(self, _request: web.Request) -> web.Response:
        while self.models_between_generations and self._generating:
            self._changed.clear()
            await self._changed.wait()
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": self.owned_by}
            for m in self.models]})  # fmt: skip

    def _script_for(self, body: dict[str, Any]) -> Script:
        if self.queue:
            return self.queue.pop(0)
        return self._default_script(body)

    def _default_script(self, body: dict[str, Any]) -> Script:
        return self.script(body) if callable(self.script) else self.script

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = Record(request.path, body, dict(request.headers), time.perf_counter())
        # The gateway's start-up probe (gateway/probe.py) is not a request a test sent: it is
        # neither recorded nor given a queued script (it runs beside the test's first requests).
        probe = "X-Andes-Probe" in request.headers
        if self._keep_records and not probe:
            self.records.append(record)
        self._changed.set()
        script = self._default_script(body) if probe else self._script_for(body)
        if script.status != 200:
            error = script.error or {"message": "scripted failure", "type": "BadRequestError",
                                     "param": None, "code": script.status}  # fmt: skip
            return web.json_response({"error": error}, status=script.status)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        self._generating += 1
        try:
            await resp.prepare(request)
            await _Stream(request, resp, script, record, self._changed).run()
        except (asyncio.CancelledError, ConnectionError):
            record.cancelled = True
            raise
        finally:
            self._generating -= 1
            self._changed.set()
        return resp


class _Stream:
    """One scripted response, event by event."""

    def __init__(self, request: web.Request, resp: web.StreamResponse, script: Script,
                 record: Record, changed: asyncio.Event) -> None:
        self.request, self.resp, self.script, self.record = request, resp, script, record
        self.changed = changed  # set after each token: ScriptedEngine.wait_for sees progress
        body = record.body
        self.chat = request.path.endswith("/chat/completions")
        self.continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))
        self.base = {"id": "scripted-1",
                     "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": 0, "model": body.get("model")}  # fmt: skip
        self.texts = script.texts(body)
        self.sent = 0  # tokens in the chunks written so far
        n = body.get("n")
        self.n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
        self.logprobs = body.get("logprobs") not in (None, False)
        top = body.get("top_logprobs") if self.chat else body.get("logprobs")
        self.top = top if isinstance(top, int) and not isinstance(top, bool) else 0
        self.offset = 0  # completions logprobs: the text offset of the next token

    async def run(self) -> None:
        script, record = self.script, self.record
        if self.chat:  # vLLM opens a chat stream with the role
            for i in range(self.n):
                await self._event({**self.base, "choices": [{
                    "index": i, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None}]})
            for piece in script.reasoning:
                await self._delta({"reasoning_content": piece})
        await asyncio.sleep(script.first_delay_s)
        total = len(self.texts)
        while (sent := self.sent) < total:
            if sent == script.error_after:
                await self._event({"error": {"message": "scripted error event",
                                             "type": "InternalServerError", "code": 500}})
                await self._write("data: [DONE]")
                record.finished = True
                return
            if sent == script.drop_after:
                assert self.request.transport is not None
                self.request.transport.close()
                record.finished = True
                return
            await self._pause_before(sent)
            n = min(script.tokens_per_chunk, total - sent)
            text = "".join(self._text(i) for i in range(sent, sent + n))
            self.sent += n  # before the chunk: its running usage counts its own tokens
            for choice in range(self.n):
                await self._chunk(_mark(text, choice), index=choice)
            record.token_clock_s.extend([time.perf_counter()] * n)
            self.changed.set()
        await self._tool_calls()
        if not script.done_without_finish:
            for choice in range(self.n):
                await self._chunk(None, script.finish(), index=choice)
            if script.usage:
                await self._event({**self.base, "choices": [], "usage": self._usage()})
        await self._write("data: [DONE]")
        record.finished = True

    async def _pause_before(self, sent: int) -> None:
        script = self.script
        if sent == script.stall_after:
            await asyncio.sleep(script.stall_s)
        elif sent and script.gap_s:
            await asyncio.sleep(script.gap_s)

    def _text(self, index: int) -> str:
        return f"{time.monotonic():.6f} " if self.script.stamp else self.texts[index]

    def _usage(self) -> dict[str, int]:
        n = self.sent
        return {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}

    async def _tool_calls(self) -> None:
        for k, (name, arguments) in enumerate(self.script.tool_calls):
            await self._delta({"tool_calls": [{"index": k, "id": f"call_{k}", "type": "function",
                                               "function": {"name": name, "arguments": ""}}]})
            for start in range(0, len(arguments), 8):
                await self._delta({"tool_calls": [{
                    "index": k, "function": {"arguments": arguments[start:start + 8]}}]})

    async def _delta(self, delta: dict[str, Any]) -> None:
        """A chat chunk with a non-text delta (reasoning, tool calls) for choice 0."""
        await self._event({**self.base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]})

    def _logprobs(self, text: str) -> dict[str, Any]:
        """Made-up logprobs of ``text`` as one token, in the shape of the API in use."""
        lp = -0.01 * (self.sent + 1)
        if self.chat:
            entry = {"token": text, "logprob": lp, "bytes": list(text.encode())}
            return {"content": [{**entry, "top_logprobs": [entry] * self.top}]}
        offset, self.offset = self.offset, self.offset + len(text)
        return {"tokens": [text], "token_logprobs": [lp], "top_logprobs": [{text: lp}],
                "text_offset": [offset]}

    async def _chunk(self, text: str | None, finish: str | None = None, index: int = 0) -> None:
        """A content chunk with ``text``, or (``None``) the finish chunk."""
        logprobs = self._logprobs(text) if self.logprobs and text is not None else None
        if self.chat:
            delta = {"content": text} if text is not None else {}
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs,
                      "finish_reason": finish}
        chunk: dict[str, Any] = {**self.base, "choices": [choice]}
        if self.continuous:
            chunk["usage"] = self._usage()
        await self._event(chunk)

    async def _event(self, data: dict[str, Any]) -> None:
        await self._write("data: " + json.dumps(data))

    async def _write(self, line: str) -> None:
        end = self.script.line_ending
        await self.resp.write((line + end + end).encode())


def _mark(text: str, choice: int) -> str:
    """Choice ``choice``'s version of a token: ``t3 `` → ``t3#1 `` (choice 0 keeps it)."""
    if choice == 0:
        return text
    core = text.rstrip()
    return f"{core}#{choice}{text[len(core):]}"


def main(argv: list[str] | None = None) -> None:
    """Serve one script on a free port until killed; print the URL on stdout (benchmarks)."""
    ap = argparse.ArgumentParser(prog="python -m bench.scripted_engine", description=main.__doc__)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    ap.add_argument("--gap-s", type=float, default=0.0, help="seconds between tokens")
    ap.add_argument("--first-delay-s", type=float, default=0.0, help="seconds before the first")
    ap.add_argument("--stamp", action="store_true", help="each token's text is its emission time")
    # A production server's backlog (vLLM's uvicorn: 2048) rather than aiohttp's 128: a burst of
    # thousands of connects beyond the backlog would wait out SYN retransmits (1 s, 3 s, 7 s) and
    # a benchmark would measure the kernel, not the gateway.
    ap.add_argument("--backlog", type=int, default=4096, help="listen backlog")
    args = ap.parse_args(argv)
    script = Script(tokens=[f"w{i} " for i in range(args.tokens)], gap_s=args.gap_s,
                    first_delay_s=args.first_delay_s, stamp=args.stamp)  # fmt: skip

    async def serve() -> None:
        engine = ScriptedEngine(script, keep_records=False, backlog=args.backlog)
        print(await engine.start(), flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
