"""One streamed request against an OpenAI-compatible endpoint, timed at the client.

:func:`stream_request` sends a :class:`~bench.plan.PlannedRequest` as a streaming
``/v1/completions`` or ``/v1/chat/completions`` call and fills a
:class:`~bench.result.RequestRecord` as chunks arrive, so whatever arrived survives a
timeout or a cancel.

Counting tokens. With ``vllm_extras`` the request asks for
``stream_options.continuous_usage_stats``: vLLM then puts the running ``usage.completion_tokens`` in
every chunk, and a chunk's token count is the increase (exact, even when the server coalesces
several tokens into one chunk). Without it — any other server — every chunk with non-empty text
counts as one token (vLLM sends one chunk per token; others may not). Either way the final
``usage`` chunk's ``completion_tokens`` is kept beside the count, and a disagreement is counted in
the summary rather than papered over.

``vllm_extras`` also sends ``ignore_eos`` (outputs are forced to ``max_tokens``, as in the paper),
the reader's spec in ``vllm_xargs`` (``andes_ttft``, ``andes_tds``, ``andes_stream_id`` — what the
Andes scheduler reads) and, when set, a ``cache_salt`` that keeps vLLM's prefix cache from serving
one run's prompts to the next. Servers that are not vLLM may reject those fields: turn it off there.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.errors import EndpointError
from bench.plan import PlannedRequest
from bench.result import RequestRecord
from gateway.sse import SSEParser

__all__ = ["API_KINDS", "TRANSPORTS", "EndpointConfig", "fetch_model", "stream_request"]

API_KINDS = ("completions", "chat")
TRANSPORTS = ("http", "ws")  # SSE over HTTP (any server), or the Andes gateway's WebSocket


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Where and how to send requests."""

    base_url: str = "http://127.0.0.1:8000"  # the server root or its /v1 prefix
    api: str = "completions"  # "completions" (/v1/completions) or "chat" (/v1/chat/completions)
    model: str | None = None  # the OpenAI model field; None: the first of GET /v1/models
    api_key: str | None = None  # sent as a Bearer token when set
    vllm_extras: bool = True  # ignore_eos, vllm_xargs with the spec, continuous usage (docstring)
    qoe_field: bool = False  # also send the gateway's ``qoe: {ttft, tds}`` request field
    cache_salt: str | None = None  # vLLM prefix-cache salt (with vllm_extras)
    temperature: float = 0.0  # sampling temperature (the length is forced, so it only shapes text)
    request_timeout_s: float = 900.0  # a request still streaming after this long fails
    read_timeout_s: float = 120.0  # a request that receives no byte for this long fails (HTTP)
    # "http": the api above as SSE; "ws": the Andes gateway's /v1/stream (chat, client pacing,
    # bench/ws_client.py), where the reader model plays pace, acks and pauses.
    transport: str = "http"
    # More request fields, as (name, value) pairs (e.g. llama-cpp-python's ``min_tokens`` and
    # ``repeat_penalty``, which ``vllm_extras`` does not cover).
    extra_fields: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.api not in API_KINDS:
            raise ValueError(f"api must be one of {', '.join(API_KINDS)}, got {self.api!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}"
            )
        if self.transport == "ws" and self.api != "chat":
            raise ValueError(
                f"the WebSocket transport streams chat completions only, got api {self.api!r}"
            )
        for name in ("request_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")

    @property
    def ws_url(self) -> str:
        """The gateway's WebSocket endpoint, ``ws[s]://host:port/v1/stream``."""
        root = self.v1_url.removesuffix("/v1")
        return "ws" + root.removeprefix("http") + "/v1/stream"

    def extra_body(self) -> dict[str, Any]:
        """The WebSocket start frame's ``extra_body``: what :meth:`body` adds for vLLM."""
        if not self.vllm_extras:
            return {}
        extra: dict[str, Any] = {"ignore_eos": True}
        if self.cache_salt:
            extra["cache_salt"] = self.cache_salt
        return extra

    @property
    def v1_url(self) -> str:
        """The ``…/v1`` prefix."""
        url = self.base_url.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    @property
    def url(self) -> str:
        """The completions URL requests go to."""
        return self.v1_url + ("/chat/completions" if self.api == "chat" else "/completions")

    def headers(self) -> dict[str, str]:
        """HTTP headers for every call."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def body(self, req: PlannedRequest, model: str) -> dict[str, Any]:
        """The JSON body for ``req``."""
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": req.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": self.temperature,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        if self.vllm_extras:
            body["ignore_eos"] = True
            body["stream_options"]["continuous_usage_stats"] = True
            body["vllm_xargs"] = {
                "andes_ttft": req.spec.ttft_s,
                "andes_tds": req.spec.tds_tok_s,
                "andes_stream_id": req.req_id,
            }
            if self.cache_salt:
                body["cache_salt"] = self.cache_salt
        if self.qoe_field:
            body["qoe"] = {"ttft": req.spec.ttft_s, "tds": req.spec.tds_tok_s}
        for key, value in self.extra_fields:
            body[key] = value(req) if callable(value) else value
        return body


async def fetch_model(session: aiohttp.ClientSession, endpoint: EndpointConfig) -> str:
    """The model to use: ``endpoint.model``, or the first model the server lists."""
    if endpoint.model:
        return endpoint.model
    url = endpoint.v1_url + "/models"
    try:
        async with session.get(
            url, headers=endpoint.headers(), timeout=aiohttp.ClientTimeout(total=30)
        ) as resp:
            if resp.status != 200:
                raise EndpointError(f"GET {url} answered HTTP {resp.status}; pass --model")
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise EndpointError(f"cannot list models at {url}: {exc or type(exc).__name__}") from None
    models = data.get("data") if isinstance(data, dict) else None
    if not models or not isinstance(models[0], dict) or "id" not in models[0]:
        raise EndpointError(f"{url} lists no model; pass --model")
    return str(models[0]["id"])


async def stream_request(
    session: aiohttp.ClientSession,
    endpoint: EndpointConfig,
    model: str,
    req: PlannedRequest,
    record: RequestRecord,
    due_clock_s: float,
) -> None:
    """Send ``req`` and fill ``record`` as the stream arrives.

    ``due_clock_s`` is the request's due time on :func:`time.perf_counter`'s clock; every time in
    the record is relative to it. Failures (HTTP errors, error events, timeouts, broken
    connections) are written to ``record.error``; only cancellation propagates.
    """
    timeout = aiohttp.ClientTimeout(
        total=endpoint.request_timeout_s, sock_read=endpoint.read_timeout_s
    )
    clock = time.perf_counter
    record.sent_s = clock() - due_clock_s
    try:
        async with session.post(
            endpoint.url, json=endpoint.body(req, model), headers=endpoint.headers(),
            timeout=timeout,
        ) as resp:  # fmt: skip
            if resp.status != 200:
                record.error = f"HTTP {resp.status}: {_error_message(await resp.text())}"
                return
            await _read_stream(resp, endpoint.api, record, due_clock_s)
    except TimeoutError:
        record.error = f"timeout after {clock() - due_clock_s - record.sent_s:.1f} s"
    except aiohttp.ClientError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.end_s = clock() - due_clock_s


async def _read_stream(
    resp: aiohttp.ClientResponse, api: str, record: RequestRecord, due_clock_s: float
) -> None:
    parser = SSEParser()  # the gateway's: WHATWG line endings (\n, \r\n, \r), split reads
    counter = _TokenCounter(api, record)
    done = False
    async for raw in resp.content.iter_any():
        now = time.perf_counter() - due_clock_s  # every event of this read arrived now
        for event in parser.feed(raw):
            if event.data.strip() == "[DONE]":
                done = True
                break
            if not counter.add(event.data, now):
                return
        if done:
            break
    counter.finish()
    if not done and record.error is None:
        record.error = "stream ended without [DONE]"


class _TokenCounter:
    """Counts one stream's tokens into ``record`` as its events arrive (module docstring)."""

    def __init__(self, api: str, record: RequestRecord) -> None:
        self.api, self.record = api, record
        self.cumulative = 0  # usage.completion_tokens seen so far (continuous usage stats)
        self.continuous = False
        self.text = hashlib.sha256()
        self.any_text = False

    def add(self, data: str, now: float) -> bool:
        """One event's data, arrived at ``now``; False when it ends the stream with an error."""
        record = self.record
        try:
            chunk = json.loads(data)
        except ValueError:
            record.error = f"bad event data: {data[:120]!r}"
            return False
        if not isinstance(chunk, dict):
            return True
        if "error" in chunk:
            record.error = f"error event: {_error_message(json.dumps(chunk))}"
            return False
        usage = chunk.get("usage")
        if isinstance(chunk.get("andes"), dict):
            record.gateway = chunk["andes"]
        choices = chunk.get("choices") or []
        if choices:
            record.token_times_s.extend([now] * max(self._new_tokens(choices[0], usage), 0))
        if isinstance(usage, dict) and not choices:  # the final usage chunk
            record.usage_completion_tokens = _int_or_none(usage.get("completion_tokens"))
            record.usage_prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        return True

    def _new_tokens(self, choice: dict[str, Any], usage: Any) -> int:
        if choice.get("finish_reason"):
            self.record.finish_reason = str(choice["finish_reason"])
        text = _chunk_text(choice, self.api)
        if text:
            self.text.update(text.encode())
            self.any_text = True
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.continuous = True
            new = usage["completion_tokens"] - self.cumulative
            self.cumulative = usage["completion_tokens"]
            return int(new)
        return 1 if text else 0

    def finish(self) -> None:
        """The stream ended: without a final usage chunk, the running count stands for it."""
        if self.continuous and self.record.usage_completion_tokens is None:
            self.record.usage_completion_tokens = self.cumulative
        if self.any_text:
            self.record.text_sha = self.text.hexdigest()[:16]


def _chunk_text(choice: dict[str, Any], api: str) -> str:
    if api == "chat":
        delta = choice.get("delta") or {}
        return str(delta.get("content") or delta.get("reasoning_content") or "")
    return str(choice.get("text") or "")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_message(text: str) -> str:
    """The ``message`` of an OpenAI error object, or the start of the body."""
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        message = err.get("message") if isinstance(err, dict) else None
        if message:
            return str(message)[:300]
    except ValueError:
        pass
    return " ".join(text.split())[:300] or "(empty body)"
