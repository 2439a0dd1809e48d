"""The gateway service: what every transport shares — admission, opening the engine request,
the live-stream table, and what happens when a stream ends (metrics, one log line)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from core.qoe import QoESpec
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, InvalidRequest, UpstreamStatus
from gateway.metrics import Metrics
from gateway.pacer import PacerConfig, PacingMode
from gateway.protocol import QoEFields, show
from gateway.stream import Stream, StreamResult, StreamTable, new_stream_id
from gateway.upstream import Endpoint, Upstream

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
            model = await self.upstream.resolve_model(req.model)
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
                                max_buffered_tokens=self.config.max_buffered_tokens)
            stream = Stream(new_stream_id(), paced, pacer,
                            slow_reader_timeout_s=self.config.slow_reader_timeout_s,
                            hooks=self.metrics.hooks(model), model=model,
                            rich=n > 1 or _wants_logprobs(req.body))
            body = dict(req.body, model=model)
            try:
                upstream = await self.upstream.open(req.endpoint, body, stream_id=stream.id,
                                                    qoe=spec)
            except GatewayError as exc:
                if exc.status >= 500:  # the engine's 4xx is the client's error, relayed
                    kind = "status" if isinstance(exc, UpstreamStatus) else "connect"
                    self.metrics.upstream_error(model, kind)
                raise
        except BaseException:
            self.table.release(None)
            raise
        self.table.register(stream)
        stream.attach(upstream)
        return stream

    def end_stream(self, stream: Stream, result: StreamResult, transport: str) -> None:
        """Free the slot, record the metrics and write the stream's one log line."""
        self.table.release(stream.id)
        self.metrics.stream_ended(stream.mode, result, stream.model)
        record = {
            "event": "stream_end", "stream_id": stream.id, "transport": transport,
            "model": stream.model, "pacing": stream.mode, "reason": result.reason,
            "finish_reason": result.finish_reason, "tokens": result.tokens,
            "qoe": round(result.qoe, 4),
            "ttft_s": None if result.ttft_s is None else round(result.ttft_s, 4),
            "tds": stream.spec.tds_tok_s,
            "error": None if result.error is None else result.error.message,
        }
        if self.config.log_format == "json":
            log.info(json.dumps(record, separators=(",", ":")))
        else:
            log.info(" ".join(f"{k}={v}" for k, v in record.items() if k != "event"))
