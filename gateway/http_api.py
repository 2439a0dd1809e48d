"""The OpenAI-compatible HTTP API: chat/completions and completions (SSE or one JSON answer),
models, and the SSE side channel for client pacing (acks).

Andes additions, all optional and all removed before the request goes upstream:

* body ``qoe: {ttft, tds}`` or headers ``X-Andes-TTFT`` / ``X-Andes-TDS`` (the body wins), else
  the scheduler's own ``vllm_xargs: {andes_ttft, andes_tds}`` when a client sends those;
* body ``pacing: server|client|off`` or header ``X-Andes-Pacing``;
* response header ``X-Andes-Stream-Id``; the final chunk (the one with ``finish_reason``, or the
  JSON answer) carries ``andes: {stream_id, qoe, ttft_s, tokens}``, which OpenAI clients ignore.

Everything else goes to the engine as the client sent it — ``tools``/``tool_choice``, ``n``,
``logprobs``/``top_logprobs``, ``response_format``, ``seed``, ``stop``, ``user``, vLLM's own
fields — and what the engine sends back beside the text reaches the client: text is paced;
tool-call and reasoning deltas are written at once, right after the text before them; with
``n`` > 1 every choice is paced at the reader's pace; logprobs travel with their tokens
(``gateway/render.py``). vLLM's ``stream_options.continuous_usage_stats`` puts the running usage,
counted as delivered, in every chunk. The engine's own errors reach the client in the gateway's
OpenAI error shape (``gateway/engine_errors.py``).

``POST /v1/streams/{id}/cancel`` ends a stream at its reader's request (a Stop button): counted
as ``cancelled``, not as a client gone away.

Bodies must be declared ``Content-Type: application/json`` (else 415: a web page at another
origin can only send a body of another type without the browser asking the gateway first, and
the gateway answers no CORS preflight), must be standard JSON (no ``NaN``/``Infinity``, nested at
most ``protocol.MAX_DEPTH`` deep) and must arrive within ``request_timeout_s`` (else 408).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.auth import GATEWAY, bearer, key_index
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    StreamNotFound,
    UnsupportedMediaType,
    openai_error,
)
from gateway.pacer import Chunk
from gateway.protocol import (
    FrameError,
    QoEFields,
    loads,
    parse_messages,
    parse_pacing,
    parse_qoe,
    parse_stop,
    parse_vllm_xargs,
    show,
)
from gateway.render import Answer, choice_runs
from gateway.service import Gateway, StreamRequest
from gateway.sse import DONE, KEEPALIVE, data_event
from gateway.stream import Extra, Stream, StreamResult, abort_transport, transport_backlog
from gateway.upstream import Endpoint

__all__ = ["add_routes"]

_ANDES_FIELDS = ("qoe", "pacing", "stream", "stream_options")
MAX_N = 128  # choices per request, as OpenAI's API allows
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the event stream
}


async def read_json(request: web.Request, limit: int, timeout_s: float = math.inf) -> Any:
    """The body as JSON; 415 unless declared JSON, 413 beyond ``limit`` bytes, 408 if it takes
    longer than ``timeout_s`` to arrive, 400 if it is not standard JSON."""
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"the request body must be Content-Type: application/json, "
                                   f"got {request.headers.get('Content-Type', '(none)')[:80]!r}")
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the limit "
                              f"of {limit} bytes")
    try:
        async with asyncio.timeout(None if math.isinf(timeout_s) else timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes") from None
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s} s") from None
    try:
        return loads(raw)
    except FrameError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.message}") from None


def _header_float(request: web.Request, name: str) -> float | None:
    text = request.headers.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"header {name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidRequest(f"header {name} must be a finite number, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class _Options:
    """What the client asked of the event stream (``stream_options``)."""

    include_usage: bool = False  # a last chunk with the usage
    continuous_usage: bool = False  # vLLM's continuous_usage_stats: the usage in every chunk


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


def parse_request(
    request: web.Request, body: Any, endpoint: Endpoint
) -> tuple[StreamRequest, bool, _Options]:
    """Validate an OpenAI request body → (request, stream?, stream options). Raises 400s."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object, got "
                             f"{_JSON_TYPES.get(type(body), 'something else')}")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("model is required: the name of a served model (GET /v1/models "
                             "lists them)", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(f"model must be a non-empty string, got {show(model)}",
                             param="model")
    try:
        if endpoint == "chat":
            parse_messages(body.get("messages"))
        else:
            prompt = body.get("prompt")
            if not (isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) == 1)):
                raise InvalidRequest(f"prompt must be a string (or a list of one), got "
                                     f"{show(prompt)}", param="prompt")
        qoe = parse_qoe(body.get("qoe"))
        header_qoe = parse_qoe({"ttft": _header_float(request, "X-Andes-TTFT"),
                                "tds": _header_float(request, "X-Andes-TDS")}, "X-Andes-*")
        pacing = parse_pacing(body.get("pacing")) or parse_pacing(
            request.headers.get("X-Andes-Pacing"), "X-Andes-Pacing")
        parse_stop(body.get("stop"))
        parse_vllm_xargs(body.get("vllm_xargs"))
    except FrameError as exc:
        raise InvalidRequest(exc.message, param=_param_of(exc.message)) from None
    qoe = QoEFields(qoe.ttft if qoe.ttft is not None else header_qoe.ttft,
                    qoe.tds if qoe.tds is not None else header_qoe.tds)
    qoe = _with_xargs_qoe(qoe, body.get("vllm_xargs"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest(f"stream must be a boolean, got {show(stream)}", param="stream")
    options = _stream_options(body.get("stream_options"))
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N):
        raise InvalidRequest(f"n must be an integer within [1, {MAX_N}], got {show(n)}",
                             param="n")
    for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                              or not lo <= v <= hi):
            raise InvalidRequest(f"{key} must be a number within [{lo}, {hi}], got {show(v)}",
                                 param=key)
    forward = {k: v for k, v in body.items() if k not in _ANDES_FIELDS}
    if options.continuous_usage:  # the engine's running usage gives the prompt's token count
        forward["stream_options"] = {"continuous_usage_stats": True}
    owner = key_index(request.app[GATEWAY], bearer(request))
    return StreamRequest(endpoint, forward, model, qoe, pacing, owner=owner), stream, options


def _with_xargs_qoe(qoe: QoEFields, xargs: Any) -> QoEFields:
    """The reader's expectation from the Andes scheduler's own fields, for what ``qoe`` and the
    headers leave open: a client that already sends ``vllm_xargs: {andes_ttft, andes_tds}``
    (``andes bench`` does, to reach the scheduler directly) is paced for the reader it declares
    there, and the gateway sends the same values on."""
    if not isinstance(xargs, dict) or (qoe.ttft is not None and qoe.tds is not None):
        return qoe
    try:
        declared = parse_qoe({"ttft": xargs.get("andes_ttft"), "tds": xargs.get("andes_tds")},
                             "vllm_xargs.andes_*")
    except FrameError as exc:
        raise InvalidRequest(exc.message, param="vllm_xargs") from None
    return QoEFields(qoe.ttft if qoe.ttft is not None else declared.ttft,
                     qoe.tds if qoe.tds is not None else declared.tds)


def _stream_options(options: Any) -> _Options:
    if options is None:
        return _Options()
    if not isinstance(options, dict):
        raise InvalidRequest(f"stream_options must be an object, got {show(options)}",
                             param="stream_options")
    flags = []
    for key in ("include_usage", "continuous_usage_stats"):
        value = options.get(key, False)
        if not isinstance(value, bool):
            raise InvalidRequest(f"stream_options.{key} must be a boolean, got {show(value)}",
                                 param="stream_options")
        flags.append(value)
    return _Options(*flags)


class _Renderer:
    """OpenAI's chunk objects for one stream."""

    def __init__(self, stream: Stream, endpoint: Endpoint, options: _Options,
                 n: int = 1) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.n = n
        prefix = "chatcmpl-" if endpoint == "chat" else "cmpl-"
        self.base = {"id": prefix + stream.id,
                     "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
                     "created": int(time.time()), "model": stream.model}
        self.include_usage = options.include_usage
        self.continuous_usage = options.continuous_usage
        # Plain one-choice text with nothing beside it (the common case) takes the fast path.
        self.plain = not (stream.rich or self.continuous_usage)
        # Content chunks differ only in their text: render them as prefix + JSON string + suffix
        # (json.dumps of the whole object per chunk was most of the gateway's serialisation time).
        probe = "\0andes\0"
        head, _, tail = _dumps(self.chunk(probe)).partition(_dumps(probe))
        self._content_head, self._content_tail = b"data: " + head, tail + b"\n\n"

    def content_event(self, text: str) -> bytes:
        """``data_event(self.chunk(text))``, without building and encoding the object."""
        return self._content_head + _dumps(text) + self._content_tail

    def delivered_events(self, chunk: Chunk) -> bytes:
        """The events of a written chunk: one per run of one choice's tokens, with their
        logprobs; the running usage (as delivered) when the client asked for it."""
        if self.plain:
            return self.content_event(chunk.text)
        usage = self._running_usage(chunk.index + chunk.count)
        if not self.stream.rich:
            return data_event(self.chunk(chunk.text, usage=usage))
        return b"".join(
            data_event(self.chunk(run.text, index=run.choice, logprobs=run.logprobs, usage=usage))
            for run in choice_runs(self.stream.meta_for(chunk)))

    def extra_event(self, extra: Extra) -> bytes:
        """A non-text delta (tool calls, reasoning) as the engine sent it."""
        choice = {"index": extra.choice, "delta": extra.delta, "logprobs": None,
                  "finish_reason": None}
        return data_event(self._with_usage(dict(self.base, choices=[choice]), None))

    def chunk(self, text: str | None = None, *, role: bool = False,
              finish_reason: str | None = None, andes: dict[str, Any] | None = None,
              index: int = 0, logprobs: Any = None,
              usage: dict[str, int] | None = None) -> dict:
        if self.endpoint == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs,
                      "finish_reason": finish_reason}
        out = self._with_usage(dict(self.base, choices=[choice]), usage)
        if andes is not None:
            out["andes"] = andes
        return out

    def role_events(self) -> bytes:
        """Chat streams open with the role, once per choice."""
        return b"".join(data_event(self.chunk(role=True, index=i)) for i in range(self.n))

    def finish_events(self, result: StreamResult) -> bytes:
        """Every choice's last chunk, with its finish reason; the last one carries ``andes``."""
        reasons = self.stream.finish_reasons or {0: result.finish_reason or "stop"}
        indices = sorted(set(range(self.n)) | reasons.keys())
        usage = self._running_usage(result.tokens)
        return b"".join(
            data_event(self.chunk(finish_reason=reasons.get(i) or "stop", index=i, usage=usage,
                                  andes=result.andes(self.stream.id) if i == indices[-1]
                                  else None))
            for i in indices)

    def usage_chunk(self, usage: dict[str, int]) -> dict:
        return dict(self.base, choices=[], usage=_usage(usage))

    def _with_usage(self, out: dict[str, Any], usage: dict[str, int] | None) -> dict[str, Any]:
        if usage is not None:
            out["usage"] = usage
        elif self.include_usage or self.continuous_usage:
            out["usage"] = self._running_usage(self.stream.pacer.sent)
        return out

    def _running_usage(self, delivered: int) -> dict[str, int] | None:
        """vLLM's continuous usage, counted as delivered to the reader (what an SSE client
        counts its tokens by), the prompt's tokens as the engine counted them."""
        if not self.continuous_usage:
            return None
        prompt = int(self.stream.usage.get("prompt_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": delivered,
                "total_tokens": prompt + delivered}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _usage(usage: dict[str, int]) -> dict[str, int]:
    p, c = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c,
            "total_tokens": int(usage.get("total_tokens", p + c))}


_DIRECT_LIMIT = 1 << 16  # bytes unsent in the socket's buffer beyond which writes go via aiohttp
_PARAM = re.compile(r"^([A-Za-z_][\w.\[\]]*) (?:must|is required|may)\b")


def _param_of(message: str) -> str | None:
    """The field an error message of gateway/protocol.py begins with (``qoe.tds must ...``)."""
    m = _PARAM.match(message)
    return m.group(1) if m else None


class _SSESink:
    def __init__(self, resp: web.StreamResponse, renderer: _Renderer, keepalive_s: float,
                 transport: asyncio.BaseTransport | None) -> None:
        self.resp = resp
        self.renderer = renderer
        self.keepalive_s = keepalive_s
        self.transport = transport
        # Direct writes (Stream._pump) put the bytes aiohttp would have put on the transport:
        # a chunk of the chunked encoding (HTTP/1.1), or the bytes as they are (HTTP/1.0,
        # delimited by the close). Never with compression, which aiohttp's writer does.
        self._chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._direct = transport is not None and not resp.compression

    def backlog(self) -> int:
        return transport_backlog(self.transport)

    def ready_now(self) -> bool:
        transport = self.transport
        return (self._direct and transport is not None and not transport.is_closing()
                and transport_backlog(transport) < _DIRECT_LIMIT)

    def write_now(self, chunk: Chunk) -> None:
        data = self.renderer.delivered_events(chunk)
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.transport.write(data)  # type: ignore[union-attr]

    def abort(self) -> None:
        abort_transport(self.transport)

    async def delta(self, chunk: Chunk) -> None:
        await self.resp.write(self.renderer.delivered_events(chunk))

    async def extra(self, extra: Extra) -> None:
        await self.resp.write(self.renderer.extra_event(extra))

    async def keepalive(self) -> None:
        await self.resp.write(KEEPALIVE)


class _CollectSink:
    keepalive_s = None

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.answer = Answer()

    def backlog(self) -> int:
        return 0

    def ready_now(self) -> bool:
        return True

    def write_now(self, chunk: Chunk) -> None:  # a rich stream's writer never comes here
        self.answer.add_text(0, chunk.text)

    def abort(self) -> None:  # pragma: no cover - its writes never block
        pass

    async def delta(self, chunk: Chunk) -> None:
        if self.stream.rich:
            self.answer.add_runs(choice_runs(self.stream.meta_for(chunk)))
        else:
            self.answer.add_text(0, chunk.text)

    async def extra(self, extra: Extra) -> None:
        self.answer.add_extra(extra)

    async def keepalive(self) -> None:  # pragma: no cover - keepalive_s is None
        pass


async def _completion(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    body = await read_json(request, gw.config.max_body_bytes, gw.config.request_timeout_s)
    req, is_stream, options = parse_request(request, body, endpoint)
    if not is_stream:
        req = StreamRequest(req.endpoint, req.body, req.model, req.qoe, "off", owner=req.owner)
    stream = await gw.open_stream(req)
    renderer = _Renderer(stream, endpoint, options, n=int(req.body.get("n") or 1))
    headers = {"X-Andes-Stream-Id": stream.id}
    if not is_stream:
        return await _single(gw, stream, renderer, headers)
    resp = web.StreamResponse(headers={**_SSE_HEADERS, **headers})
    result: StreamResult | None = None
    try:
        await resp.prepare(request)
        if endpoint == "chat":
            await resp.write(renderer.role_events())
        result = await stream.run(_SSESink(resp, renderer, gw.config.keepalive_s,
                                           request.transport))
        if result.reason in ("finished", "error"):
            if result.error is None:
                await gw.complete_usage(stream, result)
            await _sse_tail(resp, renderer, result)
    except (ConnectionError, GatewayError):
        stream.cancel("disconnected")
    finally:
        stream.cancel("disconnected")
        if result is None:
            result = stream.result or stream.finish("disconnected")
        gw.end_stream(stream, result, "sse")
    return resp


async def _sse_tail(resp: web.StreamResponse, renderer: _Renderer, result: StreamResult) -> None:
    if result.error is not None:
        await resp.write(data_event(result.error.body()))
    else:
        await resp.write(renderer.finish_events(result))
        if renderer.include_usage:
            await resp.write(data_event(renderer.usage_chunk(result.usage)))
    await resp.write(DONE)
    await resp.write_eof()


async def _single(gw: Gateway, stream: Stream, renderer: _Renderer,
                  headers: dict[str, str]) -> web.Response:
    sink = _CollectSink(stream)
    try:
        result = await stream.run(sink)
    finally:
        stream.cancel("disconnected")
        gw.end_stream(stream, stream.result or stream.finish("disconnected"), "http")
    if result.error is not None:
        return web.json_response(result.error.body(), status=result.error.status,
                                 headers={**headers, **result.error.headers()})
    await gw.complete_usage(stream, result)
    chat = renderer.endpoint == "chat"
    reasons = stream.finish_reasons or {0: result.finish_reason or "stop"}
    out = dict(renderer.base, object="chat.completion" if chat else "text_completion",
               choices=sink.answer.choices(chat, reasons, renderer.n),
               usage=_usage(result.usage), andes=result.andes(stream.id))
    return web.json_response(out, headers=headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _completion(request, "completions")


async def models(request: web.Request) -> web.Response:
    data = await request.app[GATEWAY].upstream.models()
    return web.json_response({"object": "list", "data": data})


async def ack(request: web.Request) -> web.Response:
    """``POST /v1/streams/{id}/ack {consumed, tds?, paused?}`` — client pacing over SSE."""
    gw = request.app[GATEWAY]
    stream = gw.table.streams.get(request.match_info["stream_id"])
    # A stream opened with another key is not this caller's: the same answer as no stream, so
    # an id does not even say that it exists.
    if stream is None or stream.owner != key_index(gw, bearer(request)):
        raise StreamNotFound("no live stream with this id", param="stream_id")
    body = await read_json(request, gw.config.max_body_bytes, gw.config.request_timeout_s)
    if not isinstance(body, dict):
        raise InvalidRequest("the ack body must be a JSON object {consumed, tds?, paused?}")
    consumed, tds, paused = body.get("consumed"), body.get("tds"), body.get("paused")
    if consumed is not None and (not isinstance(consumed, int) or isinstance(consumed, bool)
                                 or consumed < 0):
        raise InvalidRequest(f"consumed must be an integer >= 0, got {show(consumed)}",
                             param="consumed")
    if paused is not None and not isinstance(paused, bool):
        raise InvalidRequest(f"paused must be a boolean, got {show(paused)}", param="paused")
    if tds is not None:
        try:
            parse_qoe({"tds": tds}, "ack")
        except FrameError as exc:
            raise InvalidRequest(exc.message, param="tds") from None
        stream.set_pace(float(tds))
    if consumed is not None:
        stream.ack(consumed)
    if paused is True:
        stream.pause()
    elif paused is False:
        stream.resume()
    return web.Response(status=204)


async def cancel(request: web.Request) -> web.Response:
    """``POST /v1/streams/{id}/cancel`` — the reader stopped the stream (SSE's Stop button).

    Ends it as ``cancelled`` — the engine request is aborted at once — where closing the
    connection alone would count as the client having gone away. 204; 404 once it has ended."""
    gw = request.app[GATEWAY]
    stream = gw.table.streams.get(request.match_info["stream_id"])
    if stream is None:
        raise StreamNotFound("no live stream with this id", param="stream_id")
    stream.cancel("cancelled")
    return web.Response(status=204)


def error_response(exc: GatewayError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers())


def not_found(message: str, status: int = 404) -> web.Response:
    return web.json_response(openai_error(message, "invalid_request_error"), status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/streams/{stream_id}/ack", ack)
    app.router.add_post("/v1/streams/{stream_id}/cancel", cancel)
