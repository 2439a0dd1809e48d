"""The gateway service: what every transport shares — admission (the stream table's limit, then
the QoE queue of :mod:`gateway.dispatch`), opening the engine request, the live-stream table,
and what happens when a stream ends (usage filled in, metrics, one log line)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from core.qoe import QoESpec
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, InvalidRequest, UpstreamStatus
from gateway.metrics import Metrics
from gateway.pacer import PacerConfig, PacingMode
from gateway.protocol import QoEFields, show
from gateway.stream import Stream, StreamResult, StreamTable, new_stream_id
from gateway.upstream import Endpoint, Upstream
from gateway.usage import check_seams, count_prompt, fill_usage
from gateway.workers import WorkerSlot

__all__ = ["Gateway", "StreamRequest"]

log = logging.getLogger("andes.gateway")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A validated request, whichever transport it came from."""

    endpoint: Endpoint
    body: dict[str, Any]  # what goes upstream (the Andes fields already removed)
    model: str | None
    qoe: QoEFields
    pacing: PacingMode | None
    owner: int | None = None  # the API key that opened it (its index); None: no keys


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _wants_logprobs(body: dict[str, Any]) -> bool:
    # chat: logprobs true (top_logprobs needs it); completions: logprobs = a number, 0 included
    value = body.get("logprobs")
    return value is not None and value is not False


class Gateway:
    """One gateway process's shared state (held in the aiohttp app under ``GATEWAY``)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.upstream = Upstream(config)
        self.table = StreamTable(config.max_concurrent_streams)
        self.metrics = Metrics(active=lambda: len(self.table),
                               buffered=self.table.buffered_tokens)
        self.dispatch = Dispatcher(config, self.upstream, self.metrics.dispatch_hooks())
        self.metrics.watch(self.dispatch.scheduler.queue_length, self.upstream.replicas,
                           config.tds_tok_s)
        self._requests: dict[str, tuple[Endpoint, dict[str, Any]]] = {}
        self._background: set[asyncio.Future[None]] = set()  # seam checks after a stream
        self.worker: WorkerSlot | None = None  # set in a worker process (gateway/workers.py)

    def check_max_tokens(self, body: dict[str, Any]) -> None:
        for key in ("max_tokens", "max_completion_tokens"):
            v = body.get(key)
            if v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidRequest(f"{key} must be an integer >= 1, got {show(v)}", param=key)
            if v > self.config.max_tokens:
                raise InvalidRequest(f"{key}={v} exceeds this gateway's limit of "
                                     f"{self.config.max_tokens}", param=key)

    async def open_stream(self, req: StreamRequest) -> Stream:
        """Admit, resolve the model, open the engine request; the stream is live on return.

        Raises :class:`GatewayError` (nothing reached the engine unless it is an
        :class:`~gateway.errors.UpstreamError`)."""
        self.check_max_tokens(req.body)
        self.table.admit()
        try:
            public, model = await self.upstream.resolve_model(req.model)
            spec = QoESpec(self.config.ttft_s if req.qoe.ttft is None else req.qoe.ttft,
                           self.config.tds_tok_s if req.qoe.tds is None else req.qoe.tds)
            # n > 1: the choices' tokens are paced as one sequence at n times the pace, so each
            # choice goes at about the reader's (the engine sends them interleaved); per-choice
            # pace and metadata need each token's choice kept (rich), as logprobs need theirs.
            n = _choices(req.body)
            paced = QoESpec(spec.ttft_s, spec.tds_tok_s * n) if n > 1 else spec
            pacer = PacerConfig(tds_tok_s=paced.tds_tok_s, mode=req.pacing or self.config.pacing,
                                frame_s=self.config.frame_s,
                                word_boundary=self.config.word_boundary,
                                max_buffered_tokens=self.config.max_buffered_tokens,
                                max_buffered_bytes=self.config.max_buffered_bytes)
            stream = Stream(new_stream_id(), paced, pacer,
                            slow_reader_timeout_s=self.config.slow_reader_timeout_s,
                            hooks=self.metrics.hooks(public), model=public,
                            stall_timeout_s=self.config.upstream_stall_timeout_s,
                            rich=n > 1 or _wants_logprobs(req.body))
            stream.owner = req.owner
            body = dict(req.body, model=model)
            replica = await self.dispatch.acquire(stream, req.endpoint, body)
            try:
                upstream = await self.upstream.open(req.endpoint, body, stream_id=stream.id,
                                                    qoe=spec, server=replica)
            except BaseException as exc:
                self.dispatch.failed_to_open(stream)
                # The engine's 4xx is the client's error, relayed: not an engine failure.
                if isinstance(exc, GatewayError) and exc.status >= 500:
                    kind = "status" if isinstance(exc, UpstreamStatus) else "connect"
                    self.metrics.upstream_error(public, kind)
                raise
        except BaseException:
            self.table.release(None)
            raise
        self.table.register(stream)
        self._requests[stream.id] = (req.endpoint, body)
        stream.attach(upstream)
        count_prompt(self.upstream, stream, req.endpoint, body)
        return stream

    async def complete_usage(self, stream: Stream, result: StreamResult) -> None:
        """Fill in what the engine did not count (:mod:`gateway.usage`) before it is reported."""
        endpoint, body = self._requests.get(stream.id, ("chat", {}))
        await fill_usage(self.upstream, stream, result, endpoint, body)

    def end_stream(self, stream: Stream, result: StreamResult, transport: str) -> None:
        """Free the slot, record the metrics and write the stream's one log line."""
        self.table.release(stream.id)
        endpoint, body = self._requests.pop(stream.id, ("chat", {}))
        if stream.prompt_count is not None and not stream.prompt_count.done():
            stream.prompt_count.cancel()
        if stream.parks:
            task = asyncio.ensure_future(check_seams(
                self.upstream, stream, endpoint, body,
                lambda outcome: self.metrics.seams.labels(outcome).inc()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self.metrics.stream_ended(stream.mode, result, stream.model)
        record = {
            "event": "stream_end", "stream_id": stream.id, "transport": transport,
            "model": stream.model, "pacing": stream.mode, "reason": result.reason,
            "finish_reason": result.finish_reason, "tokens": result.tokens,
            "qoe": round(result.qoe, 4),
            "ttft_s": None if result.ttft_s is None else round(result.ttft_s, 4),
            "tds": stream.spec.tds_tok_s, "parks": result.parks,
            "queued_s": round(result.queued_s, 4),
            "error": None if result.error is None else result.error.message,
        }
        if self.config.log_format == "json":
            log.info(json.dumps(record, separators=(",", ":")))
        else:
            log.info(" ".join(f"{k}={v}" for k, v in record.items() if k != "event"))
