"""The engine side: streaming OpenAI-compatible requests over one pooled aiohttp session.

Works with any server that speaks OpenAI's streaming chat/completions API (vLLM, SGLang, TGI,
llama.cpp's server, Ollama). Every request goes upstream with ``stream: true`` and
``stream_options.include_usage`` — even when the client asked for a single JSON answer — so the
gateway sees each token as it is produced and can cancel at once: closing the response closes the
connection, which is how an OpenAI-compatible server learns to abort (vLLM frees the KV cache).

Token counting: each SSE content delta is counted as one token. That is exact for vLLM, which
sends one delta per generated token (a delta may be empty while a multi-byte character or a stop
string is held back — those are skipped); servers that batch several tokens per delta make the
count, and so the pacing, coarser. Where the engine returns token ids (vLLM with
``return_token_ids``, asked for where the start-up probe found it works) the ids are counted
instead. The final ``usage`` is the engine's own count where it sends one; where it does not
(llama-cpp-python's server streams none) the gateway fills in its own (:mod:`gateway.usage`).

A stream that ends with ``[DONE]`` before any choice finished is an error, not a short answer:
llama-cpp-python's server does that to a stream when another request arrives (its default
``interrupt_requests``), and passing it on as a normal end would truncate text silently.

Every token and every open/close is reported to the replica's :class:`CapacityModel`: that is
all the gateway learns an engine's capacity from.

Model aliases (``model_aliases``, ``public=upstream-id``): clients see and ask for the public
name (``/v1/models`` lists it), the engine gets its own id (e.g. a GGUF file path).

``vllm_xargs`` (``{"andes_stream_id", "andes_ttft", "andes_tds"}``) carries the stream id and QoE to
the Andes scheduler. Stock servers may reject unknown fields, so it is sent only when configured
``on``, or ``auto`` and the upstream's ``/v1/models`` says ``owned_by: vllm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from core.qoe import QoESpec
from gateway.config import GatewayConfig
from gateway.engine_errors import relay_error
from gateway.errors import (
    InvalidRequest,
    ModelNotFound,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.replica import Replica
from gateway.sse import SSEParser
from slack.discovery import SCHEDULER_HEADER

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
    token_ids: tuple[int, ...] | None = None  # the generated ids in this chunk, where returned
    prompt_token_ids: tuple[int, ...] | None = None  # the prompt's ids (first chunk), if returned
    choice: int = 0
    logprobs: Any = None
    extra: dict[str, Any] | None = None


def _base(url: str) -> str:
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class Upstream:
    """The pool of engines behind the gateway. Start with :meth:`start`, stop with :meth:`close`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.replicas = [Replica(_base(u), index=i) for i, u in enumerate(config.upstreams)]
        self.aliases = dict(config.alias_map())
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

    async def refresh(self, server: Replica, timeout_s: float | None = None) -> None:
        """``GET /v1/models`` of ``server``; raises :class:`UpstreamUnavailable`."""
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.config.upstream_connect_timeout_s)
        try:
            async with self.session.get(server.base + "/v1/models", timeout=timeout) as resp:
                if resp.status != 200:
                    raise UpstreamUnavailable(f"GET /v1/models returned HTTP {resp.status}")
                data = await resp.json(content_type=None)
                server.schedules_itself = resp.headers.get(SCHEDULER_HEADER) == "andes"
                server.controlled = server.controlled or server.schedules_itself
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            server.reachable = False
            server.last_check_timed_out = isinstance(exc, TimeoutError)
            raise UpstreamUnavailable(f"upstream {server.base} is unreachable: "
                                      f"{type(exc).__name__}") from None
        except UpstreamUnavailable:
            server.reachable = False
            server.last_check_timed_out = False
            raise
        models = data.get("data") if isinstance(data, dict) else None
        server.models = [m for m in models or [] if isinstance(m, dict) and "id" in m]
        server.is_vllm = any(m.get("owned_by") == "vllm" for m in server.models)
        server.models_at_s = time.monotonic()
        server.reachable = True

    async def _fresh(self, server: Replica) -> None:
        if time.monotonic() - server.models_at_s <= MODELS_TTL_S:
            return
        # One refresh in flight per engine: a burst of requests on a stale cache would otherwise
        # send the engine one GET /v1/models each, ahead of their own requests.
        if server.refreshing is None:
            server.refreshing = asyncio.ensure_future(self.refresh(server))
            server.refreshing.add_done_callback(server.refreshed)
        if server.models and (server.reachable or server.busy_not_dead(time.monotonic())):
            # A stale list is good enough meanwhile: llama-cpp-python answers GET /v1/models
            # only between generations (it waits for its one slot), so waiting would hold every
            # new request behind the stream being generated — and a refresh that timed out
            # while it kept generating says it is busy, not gone.
            return
        await asyncio.shield(server.refreshing)

    async def upstream_models(self) -> list[dict[str, Any]]:
        """The union of what the upstreams serve, under their own ids."""
        seen: dict[str, dict[str, Any]] = {}
        errors: list[UpstreamError] = []
        for server in self.replicas:
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

    async def models(self) -> list[dict[str, Any]]:
        """The served models, as clients name them: the allow-list if configured, else the
        upstreams' models with each aliased id shown under its public name."""
        if self.config.models:
            return [{"id": m, "object": "model", "created": 0, "owned_by": "andes"}
                    for m in self.config.models]
        upstream = await self.upstream_models()
        by_id = {m["id"]: m for m in upstream}
        out: list[dict[str, Any]] = []
        aliased = set(self.aliases.values())
        for public, target in self.aliases.items():
            card = dict(by_id.get(target, {"object": "model", "created": 0,
                                           "owned_by": "andes"}), id=public)
            card["root"] = target
            out.append(card)
        out.extend(m for m in upstream if m["id"] not in aliased and m["id"] not in self.aliases)
        return out

    async def resolve_model(self, model: str | None) -> tuple[str, str]:
        """(the name clients see, the id the engine gets) for a requested model; ``None`` picks
        the first served. Raises :class:`ModelNotFound`."""
        served = [m["id"] for m in await self.models()]
        if model is None:
            if not served:
                raise UpstreamUnavailable("no model is served upstream")
            model = served[0]
        elif model not in served:
            raise ModelNotFound(f"The model {model!r} does not exist or is not served here "
                                f"(served: {', '.join(served) or 'none'})", param="model")
        return model, self.aliases.get(model, model)

    async def health(self) -> list[dict[str, Any]]:
        """Reachability of every upstream (a short GET /v1/models each)."""
        async def probe(server: Replica) -> dict[str, Any]:
            t0 = time.monotonic()
            try:
                await self.refresh(server, HEALTH_TIMEOUT_S)
            except UpstreamError as exc:
                return {"url": server.base, "reachable": False, "healthy": server.healthy,
                        "error": exc.message}
            a, b = server.capacity.line()
            return {"url": server.base, "reachable": True, "healthy": server.healthy,
                    "latency_ms": round((time.monotonic() - t0) * 1000, 1),
                    "models": [m["id"] for m in server.models], "active": server.active,
                    # Who orders the streams: the Andes scheduler in the engine, the
                    # gateway's queue, or (admission off) the engine's own order alone.
                    "scheduled_by": ("andes engine" if server.controlled
                                     else "gateway" if self.config.admission else "engine"),
                    "continuation": server.continuation, "probe": server.probe_note,
                    "failures": server.failures,
                    "token_latency_s": {"a": round(a, 5), "b": round(b, 5)},
                    "token_rate_tok_s": {str(k): round(r, 2)
                                         for k, r in server.capacity.rates().items()}}
        return list(await asyncio.gather(*(probe(s) for s in self.replicas)))

    # -- token counts ---------------------------------------------------------------------------

    async def tokenize(self, server: Replica, model: str, text: str,
                       timeout_s: float = 5.0) -> int | None:  # fmt: skip
        """How many tokens the engine makes of ``text`` (with its usual special tokens), or None
        when it has no tokenize endpoint or the call fails."""
        kind = server.tokenize
        if kind is None:
            return None
        path, body = {
            "vllm": ("/tokenize", {"model": model, "prompt": text}),
            "llama_cpp_python": ("/extras/tokenize", {"model": model, "input": text}),
            "llama_cpp": ("/tokenize", {"content": text, "add_special": True}),
        }[kind]
        try:
            async with self.session.post(server.base + path, json=body,
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if resp.status != 200:
                    return None
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        if isinstance(data, dict):
            if isinstance(data.get("count"), int):
                return int(data["count"])
            if isinstance(data.get("tokens"), list):
                return len(data["tokens"])
        return None

    # -- streaming ------------------------------------------------------------------------------

    def pick(self, model: str) -> Replica:
        """Least busy among the healthy replicas serving ``model`` (routing without admission)."""
        candidates = [s for s in self.replicas if s.healthy and s.serves(model)]
        if not candidates:
            candidates = [s for s in self.replicas if s.reachable is not False] or self.replicas
        if not candidates:
            raise UpstreamUnavailable("no upstream is configured")
        return min(candidates, key=lambda s: s.active)

    async def open(self, endpoint: Endpoint, body: dict[str, Any], *, stream_id: str,
                   qoe: QoESpec, server: Replica | None = None,
                   resumed: bool = False) -> UpstreamStream:  # fmt: skip
        """Send a streaming request; return once the engine has answered with 200.

        ``server`` defaults to the least busy; ``resumed`` marks a continuation (its time to
        first token is learned apart). Raises :class:`UpstreamStatus` (the engine's error status
        and object) or :class:`UpstreamUnavailable` (could not connect, or the connection broke).
        """
        if server is None:
            server = self.pick(str(body.get("model")))
        if not server.healthy:
            raise UpstreamUnavailable(f"upstream {server.base} is out of service")
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
            given = payload.get("vllm_xargs")
            extra = dict(given) if isinstance(given, dict) else {}
            extra.update(andes_stream_id=stream_id, andes_ttft=qoe.ttft_s, andes_tds=qoe.tds_tok_s)
            payload["vllm_xargs"] = extra
        if server.continuation == "token_ids":
            payload["return_token_ids"] = True
        data = _encode(payload)
        k_before = server.active
        server.opened()
        opened_s = time.monotonic()
        # A stopped engine (SIGSTOP, a wedged event loop) still accepts the connection — the
        # kernel does — and then never answers: bound the wait for the response to start.
        limit_s = self.config.upstream_first_byte_timeout_s
        try:
            async with asyncio.timeout(limit_s) as deadline:
                resp = await self.session.post(server.base + _PATHS[endpoint], data=data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            server.closed()
            server.failed()
            if deadline.expired():
                raise UpstreamTimeout(f"the engine did not answer within {limit_s:g} s") from None
            raise UpstreamUnavailable(f"cannot reach the engine: {type(exc).__name__}") from None
        except BaseException:
            server.closed()
            raise
        if resp.status != 200:
            try:
                raw = await resp.read()
            except aiohttp.ClientError:
                raw = b""
            finally:
                resp.release()
                server.closed()
            raise UpstreamStatus(resp.status,
                                 relay_error(resp.status, _error_object(raw, resp.status), body),
                                 _retry_after(resp.headers.get("Retry-After")))
        server.failures = 0
        server.last_token_s = time.monotonic()  # it answered: progress
        return UpstreamStream(resp, endpoint, server, opened_s=opened_s, k_before=k_before,
                              resumed=resumed)


class UpstreamStream:
    """One engine response being streamed. Iterate for events; :meth:`close` aborts it."""

    def __init__(self, resp: aiohttp.ClientResponse, endpoint: Endpoint, server: Replica, *,
                 opened_s: float, k_before: int = 0, resumed: bool = False) -> None:
        self._resp = resp
        self._endpoint = endpoint
        self.server = server
        self._closed = False
        self._opened_s = opened_s
        self._k_before = k_before
        self.resumed = resumed
        self.first_token_s: float | None = None  # when its first token came (monotonic)
        self.on_first_token: Callable[[float], None] | None = None  # seconds since it was sent
        self._failure: str | None = None  # why the gateway ended it (see fail)
        server.streams.add(self)

    def fail(self, message: str) -> None:
        """End it from the gateway's side with ``message`` as the stream's error."""
        self._failure = message
        self.close()

    def close(self) -> None:
        """Abort: close the connection so the engine cancels the request. Idempotent."""
        if not self._closed:
            self._closed = True
            self.server.closed()
            self.server.streams.discard(self)
            self._resp.close()

    def _release(self) -> None:
        """The response was read to its end: its connection goes back to the pool, so the next
        stream does not open one (a connect was a large share of a short stream's cost)."""
        if not self._closed:
            self._closed = True
            self.server.closed()
            self.server.streams.discard(self)
            self._resp.release()

    async def events(self) -> AsyncIterator[UpstreamEvent]:
        """Content deltas, then the finish reason and usage. Raises :class:`UpstreamError` on a
        broken stream (an error event, a bad chunk, or the connection ending before the finish)."""
        parser = SSEParser()
        finished = False
        content = self._resp.content
        try:
            while True:
                try:
                    chunk = await content.readany()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if self._failure is not None:
                        raise UpstreamUnavailable(self._failure) from None
                    if not self._closed:  # our own close (a park, a cancel) is no engine fault
                        self.server.failed()
                    raise UpstreamError(
                        f"the engine's stream broke: {type(exc).__name__}") from None
                if not chunk:
                    if self._failure is not None:
                        raise UpstreamUnavailable(self._failure)
                    break
                for sse in parser.feed(chunk):
                    if sse.data.strip() == "[DONE]":
                        if not finished:
                            raise UpstreamError("the engine ended the stream before it finished "
                                                "(interrupted upstream)")
                        return
                    for event in self._parse(sse.data):
                        if event.finish_reason is not None:
                            finished = True
                        self._count(event)
                        yield event
            if not finished:
                raise UpstreamError("the engine closed the stream before it finished")
        finally:
            if finished and content.at_eof():
                self._release()
            else:
                self.close()

    def _count(self, event: UpstreamEvent) -> None:
        """Time the engine's tokens: its first token and its pace, for the capacity model."""
        n = (len(event.token_ids) if event.token_ids is not None
             else int(event.text is not None))  # fmt: skip
        if not n:
            return
        now = time.monotonic()
        capacity = self.server.capacity
        self.server.last_token_s = now
        if self.first_token_s is None:
            self.first_token_s = now
            capacity.first_token(now - self._opened_s, self._k_before, self.resumed, now)
            if self.on_first_token is not None:
                self.on_first_token(now - self._opened_s)
        capacity.tokens(n, now)

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
        prompt_ids = obj.get("prompt_token_ids")
        return [self._choice(c, usage if i == len(choices) - 1 else None, prompt_ids)
                for i, c in enumerate(choices)]

    def _choice(self, choice: dict[str, Any], usage: dict[str, int] | None,
                prompt_ids: Any = None) -> UpstreamEvent:  # fmt: skip
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
        else:  # completions (a continuation is always one)
            text = choice.get("text")
        prompt_ids = prompt_ids or choice.get("prompt_token_ids")
        if not isinstance(text, str) or not text:
            text = None
        elif not text.isascii():
            text = _valid_text(text)
        return UpstreamEvent(text=text, finish_reason=choice.get("finish_reason"), usage=usage,
                             token_ids=_ids(choice.get("token_ids")),
                             prompt_token_ids=_ids(prompt_ids),
                             choice=index if isinstance(index, int) and index >= 0 else 0,
                             logprobs=choice.get("logprobs"), extra=extra)


def _ids(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _valid_text(text: str) -> str:
    """``text`` with any lone surrogate (an engine's ``"\\ud83d"`` escape split from its pair)
    replaced by U+FFFD: it could not be encoded for the client, and would end the stream there."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _encode(payload: dict[str, Any]) -> bytes:
    """The request body as standard JSON. A value JSON cannot carry (NaN from a msgpack frame,
    nesting too deep to encode) is the client's error, found before anything is sent."""
    try:
        return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"the request cannot be sent on as JSON: {exc}") from None


def _retry_after(value: str | None) -> float | None:
    """An engine's ``Retry-After`` in seconds (the delta form; the date form is rare here)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 86400 else None


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

