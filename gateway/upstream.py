"""The engine side: streaming OpenAI-compatible requests over one pooled aiohttp session.

Works with any server that speaks OpenAI's streaming chat/completions API (vLLM, SGLang, TGI,
llama.cpp's server, Ollama). Every request goes upstream with ``stream: true`` and
``stream_options.include_usage`` — even when the client asked for a single JSON answer — so the
gateway sees each token as it is produced and can cancel at once: closing the response closes the
connection, which is how an OpenAI-compatible server learns to abort (vLLM frees the KV cache).

Token counting: each SSE content delta is counted as one token. That is exact for vLLM, which
sends one delta per generated token (a delta may be empty while a multi-byte character or a stop
string is held back — those are skipped); servers that batch several tokens per delta make the
count, and so the pacing, coarser. The final ``usage`` is the engine's own count.

``vllm_xargs`` (``{"andes_stream_id", "andes_ttft", "andes_tds"}``) carries the stream id and QoE to
the Andes scheduler. Stock servers may reject unknown fields, so it is sent only when configured
``on``, or ``auto`` and the upstream's ``/v1/models`` says ``owned_by: vllm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from core.qoe import QoESpec
from gateway.config import GatewayConfig
from gateway.engine_errors import relay_error
from gateway.errors import (
    ModelNotFound,
    UpstreamError,
    UpstreamStatus,
    UpstreamUnavailable,
)
from gateway.sse import SSEParser

__all__ = ["Endpoint", "Upstream", "UpstreamEvent", "UpstreamStream"]

MODELS_TTL_S = 30.0  # how long a /v1/models answer is trusted
HEALTH_TIMEOUT_S = 2.0
_READ_BYTES = 1 << 16

Endpoint = Literal["chat", "completions"]
_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    """One content delta (``text``), and/or the end of the choice, and/or the usage.

    Beside the text, what the engine sent with it: ``logprobs`` (its object for this delta) and
    ``extra``, the delta's non-text fields (``tool_calls``, ``reasoning_content``, ...), which
    are not paced; ``choice`` is the choice's index (requests with ``n`` > 1)."""

    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    choice: int = 0
    logprobs: Any = None
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class _Server:
    base: str  # without a trailing /v1
    active: int = 0  # requests in flight, for least-loaded routing
    models: list[dict[str, Any]] = field(default_factory=list)
    models_at_s: float = -1e18
    is_vllm: bool = False
    reachable: bool | None = None
    refreshing: asyncio.Future[None] | None = None  # the GET /v1/models in flight, if any

    def refreshed(self, done: asyncio.Future[None]) -> None:
        self.refreshing = None
        if not done.cancelled():
            done.exception()  # retrieved: every waiter got it, even if all were cancelled


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class Upstream:
    """The pool of engines behind the gateway. Start with :meth:`start`, stop with :meth:`close`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._servers = [_Server(_base(u)) for u in config.upstreams]
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/json"}
        if config.upstream_api_key:
            self._headers["Authorization"] = f"Bearer {config.upstream_api_key}"

    async def start(self) -> None:
        # No connection limit: every paced stream holds one upstream connection for its lifetime,
        # and the gateway's own max_concurrent_streams is the bound.
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None,
                                        sock_connect=self.config.upstream_connect_timeout_s)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                              headers=self._headers, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    # -- models and health ----------------------------------------------------------------------

    async def _refresh(self, server: _Server, timeout_s: float | None = None) -> None:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.config.upstream_connect_timeout_s)
        try:
            async with self.session.get(server.base + "/v1/models", timeout=timeout) as resp:
                if resp.status != 200:
                    raise UpstreamUnavailable(f"GET /v1/models returned HTTP {resp.status}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            server.reachable = False
            raise UpstreamUnavailable(f"upstream {server.base} is unreachable: "
                                      f"{type(exc).__name__}") from None
        except UpstreamUnavailable:
            server.reachable = False
            raise
        models = data.get("data") if isinstance(data, dict) else None
        server.models = [m for m in models or [] if isinstance(m, dict) and "id" in m]
        server.is_vllm = any(m.get("owned_by") == "vllm" for m in server.models)
        server.models_at_s = time.monotonic()
        server.reachable = True

    async def _fresh(self, server: _Server) -> None:
        if time.monotonic() - server.models_at_s <= MODELS_TTL_S:
            return
        # One refresh in flight per engine: a burst of requests on a stale cache would otherwise
        # send the engine one GET /v1/models each, ahead of their own requests.
        if server.refreshing is None:
            server.refreshing = asyncio.ensure_future(self._refresh(server))
            server.refreshing.add_done_callback(server.refreshed)
        await asyncio.shield(server.refreshing)

    async def models(self) -> list[dict[str, Any]]:
        """The served models: the allow-list if configured, else the union of the upstreams'."""
        if self.config.models:
            return [{"id": m, "object": "model", "created": 0, "owned_by": "andes"}
                    for m in self.config.models]
        seen: dict[str, dict[str, Any]] = {}
        errors: list[UpstreamError] = []
        for server in self._servers:
            try:
                await self._fresh(server)
            except UpstreamError as exc:
                errors.append(exc)
                continue
            for m in server.models:
                seen.setdefault(m["id"], m)
        if not seen and errors:
            raise errors[0]
        return list(seen.values())

    async def resolve_model(self, model: str | None) -> str:
        """Check a requested model against what is served; ``None`` picks the first served."""
        served = [m["id"] for m in await self.models()]
        if model is None:
            if not served:
                raise UpstreamUnavailable("no model is served upstream")
            return served[0]
        if model not in served:
            raise ModelNotFound(f"The model {model!r} does not exist or is not served here "
                                f"(served: {', '.join(served) or 'none'})", param="model")
        return model

    async def health(self) -> list[dict[str, Any]]:
        """Reachability of every upstream (a short GET /v1/models each)."""
        async def probe(server: _Server) -> dict[str, Any]:
            t0 = time.monotonic()
            try:
                await self._refresh(server, HEALTH_TIMEOUT_S)
            except UpstreamError as exc:
                return {"url": server.base, "reachable": False, "error": exc.message}
            return {"url": server.base, "reachable": True,
                    "latency_ms": round((time.monotonic() - t0) * 1000, 1),
                    "models": [m["id"] for m in server.models], "active": server.active}
        return list(await asyncio.gather(*(probe(s) for s in self._servers)))

    # -- streaming ------------------------------------------------------------------------------

    async def _pick(self, model: str) -> _Server:
        candidates = [s for s in self._servers if any(m["id"] == model for m in s.models)]
        if not candidates:
            candidates = [s for s in self._servers if s.reachable is not False] or self._servers
        if not candidates:
            raise UpstreamUnavailable("no upstream is configured")
        return min(candidates, key=lambda s: s.active)

    async def open(self, endpoint: Endpoint, body: dict[str, Any], *, stream_id: str,
                   qoe: QoESpec) -> UpstreamStream:
        """Send a streaming request; return once the engine has answered with 200.

        Raises :class:`UpstreamStatus` (the engine's error status and object) or
        :class:`UpstreamUnavailable` (could not connect, or the connection broke).
        """
        server = await self._pick(str(body.get("model")))
        payload = dict(body)
        payload["stream"] = True
        # The usage always (the gateway's own accounting); running usage in every chunk only
        # when the client asked for vLLM's continuous_usage_stats (http_api forwards it).
        payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        xargs = self.config.send_vllm_xargs
        if xargs == "auto" and server.models_at_s < 0:
            with contextlib.suppress(UpstreamError):
                await self._fresh(server)
        if xargs == "on" or (xargs == "auto" and server.is_vllm):
            extra = dict(payload.get("vllm_xargs") or {})
            extra.update(andes_stream_id=stream_id, andes_ttft=qoe.ttft_s, andes_tds=qoe.tds_tok_s)
            payload["vllm_xargs"] = extra
        server.active += 1
        try:
            resp = await self.session.post(server.base + _PATHS[endpoint], json=payload)
        except (aiohttp.ClientError, TimeoutError) as exc:
            server.active -= 1
            server.reachable = False
            raise UpstreamUnavailable(f"cannot reach the engine: {type(exc).__name__}") from None
        except BaseException:
            server.active -= 1
            raise
        if resp.status != 200:
            try:
                raw = await resp.read()
            except aiohttp.ClientError:
                raw = b""
            finally:
                resp.release()
                server.active -= 1
            raise UpstreamStatus(resp.status,
                                 relay_error(resp.status, _error_object(raw, resp.status), body))
        return UpstreamStream(resp, endpoint, server)


class UpstreamStream:
    """One engine response being streamed. Iterate for events; :meth:`close` aborts it."""

    def __init__(self, resp: aiohttp.ClientResponse, endpoint: Endpoint, server: _Server) -> None:
        self._resp = resp
        self._endpoint = endpoint
        self._server = server
        self._closed = False

    def close(self) -> None:
        """Abort: close the connection so the engine cancels the request. Idempotent."""
        if not self._closed:
            self._closed = True
            self._server.active -= 1
            self._resp.close()

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        """Content deltas, then the finish reason and usage. Raises :class:`UpstreamError` on a
        broken stream (an error event, a bad chunk, or the connection ending before the finish)."""
        parser = SSEParser()
        finished = False
        try:
            while True:
                try:
                    chunk = await self._resp.content.readany()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise UpstreamError(
                        f"the engine's stream broke: {type(exc).__name__}") from None
                if not chunk:
                    break
                for sse in parser.feed(chunk):
                    if sse.data.strip() == "[DONE]":
                        return
                    for event in self._parse(sse.data):
                        if event.finish_reason is not None:
                            finished = True
                        yield event
            if not finished:
                raise UpstreamError("the engine closed the stream before it finished")
        finally:
            self.close()

    def _parse(self, data: str) -> list[UpstreamEvent]:
        try:
            obj = json.loads(data)
        except ValueError:
            raise UpstreamError(
                f"the engine sent a chunk that is not JSON: {data[:80]!r}") from None
        if not isinstance(obj, dict):
            raise UpstreamError(f"the engine sent an unexpected chunk: {data[:80]!r}")
        if obj.get("error") or obj.get("object") == "error":
            err = obj.get("error") if isinstance(obj.get("error"), dict) else obj
            raise UpstreamError(str(err.get("message") or "the engine reported an error"))
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else None
        choices = [c for c in obj.get("choices") or () if isinstance(c, dict)]
        if not choices:
            return [UpstreamEvent(usage=usage)]
        # Usage goes with the last event of the chunk: it counts every choice in it.
        return [self._choice(c, usage if i == len(choices) - 1 else None)
                for i, c in enumerate(choices)]

    def _choice(self, choice: dict[str, Any], usage: dict[str, int] | None) -> UpstreamEvent:
        index = choice.get("index", 0)
        extra = None
        if self._endpoint == "chat":
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                delta = {}
            text = delta.get("content")
            if not delta.keys() <= {"role", "content"}:
                extra = {k: v for k, v in delta.items()
                         if k not in ("role", "content") and v not in (None, "", [])} or None
        else:
            text = choice.get("text")
        return UpstreamEvent(text=text if isinstance(text, str) and text else None,
                             finish_reason=choice.get("finish_reason"), usage=usage,
                             choice=index if isinstance(index, int) and index >= 0 else 0,
                             logprobs=choice.get("logprobs"), extra=extra)


def _error_object(raw: bytes, status: int) -> dict[str, Any]:
    """The engine's error object, whichever of the common shapes it used."""
    try:
        obj = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()[:500]
        return {"message": text or f"upstream returned HTTP {status}", "type": "upstream_error"}
    if isinstance(obj, dict):
        if isinstance(obj.get("error"), dict):  # OpenAI, recent vLLM
            return obj["error"]
        if "message" in obj:  # older vLLM: {"object": "error", "message", "type", "code"}
            return obj
        if isinstance(obj.get("error"), str):  # TGI, llama.cpp variants
            return {"message": obj["error"], "type": obj.get("error_type", "upstream_error")}
        if "detail" in obj:  # FastAPI validation errors
            return {"message": json.dumps(obj["detail"])[:500], "type": "invalid_request_error"}
    return {"message": f"upstream returned HTTP {status}", "type": "upstream_error"}

