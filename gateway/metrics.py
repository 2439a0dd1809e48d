"""Prometheus metrics of one gateway (a registry per app, so tests and several apps never mix).

Exposed at ``GET /metrics`` in the Prometheus text format; ``model`` is the served model's name:

* ``andes_gateway_stream_qoe{model}`` — QoE of finished streams, measured at delivery (histogram)
* ``andes_gateway_ttft_seconds{model}`` — time to the first delivered token (histogram)
* ``andes_gateway_inter_token_latency_seconds{model}`` — between two writes to the reader, per
  token of the later one: the inter-token latency as delivered, not as generated (histogram)
* ``andes_gateway_pacing_lateness_seconds{model}`` — how late paced chunks were written
* ``andes_gateway_active_streams`` — streams open now (gauge)
* ``andes_gateway_buffered_tokens`` — tokens received and not yet read, all streams (gauge)
* ``andes_gateway_streams_total{model,pacing,reason}`` — finished streams by how they ended:
  ``finished``, ``cancelled`` (the reader stopped it: a WebSocket ``cancel``, the SSE cancel
  call), ``disconnected`` (the client went away), ``error``
* ``andes_gateway_upstream_errors_total{model,kind}`` — engine failures (``connect``, ``status``:
  the engine answered 5xx, ``mid_stream``). The engine refusing a request (4xx: a bad field) is
  the client's error, relayed to it, not the engine's failure: it counts in ``requests_total``.
* ``andes_gateway_requests_total{route,status}`` — HTTP requests by route and status
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.stream import StreamHooks, StreamResult

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_QOE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Readers' paces put delivered gaps around 0.1–0.4 s per token; engines' around 0.01–0.1 s.
_ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The gateway metrics. ``active`` and ``buffered`` are read from live state when scraped."""

    def __init__(self, active: Callable[[], float], buffered: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.qoe = Histogram("andes_gateway_stream_qoe", "QoE of finished streams, at delivery",
                             ["model"], buckets=_QOE_BUCKETS, registry=r)
        self.ttft = Histogram("andes_gateway_ttft_seconds", "Time to the first delivered token",
                              ["model"], buckets=_TTFT_BUCKETS, registry=r)
        self.inter_token = Histogram("andes_gateway_inter_token_latency_seconds",
                                     "Seconds per token between two writes to the reader",
                                     ["model"], buckets=_ITL_BUCKETS, registry=r)
        self.lateness = Histogram("andes_gateway_pacing_lateness_seconds",
                                  "Paced chunk write time minus its due time",
                                  ["model"], buckets=_LATENESS_BUCKETS, registry=r)
        self.active = Gauge("andes_gateway_active_streams", "Streams open now", registry=r)
        self.active.set_function(active)
        self.buffered = Gauge("andes_gateway_buffered_tokens",
                              "Tokens received from the engine and not yet read", registry=r)
        self.buffered.set_function(buffered)
        self.streams = Counter("andes_gateway_streams", "Finished streams",
                               ["model", "pacing", "reason"], registry=r)
        self.upstream_errors = Counter("andes_gateway_upstream_errors", "Engine failures",
                                       ["model", "kind"], registry=r)
        self.requests = Counter("andes_gateway_requests", "HTTP requests",
                                ["route", "status"], registry=r)
        self._hooks: dict[str, StreamHooks] = {}

    def hooks(self, model: str = "") -> StreamHooks:
        """The stream callbacks for ``model`` (one set per model: its labelled children are
        looked up once, not per write)."""
        hooks = self._hooks.get(model)
        if hooks is None:
            errors = self.upstream_errors
            hooks = StreamHooks(lateness=self.lateness.labels(model).observe,
                                upstream_error=lambda kind: errors.labels(model, kind).inc(),
                                inter_token=self.inter_token.labels(model).observe)
            self._hooks[model] = hooks
        return hooks

    def upstream_error(self, model: str, kind: str) -> None:
        self.upstream_errors.labels(model, kind).inc()

    def stream_ended(self, pacing: str, result: StreamResult, model: str = "") -> None:
        self.streams.labels(model, pacing, result.reason).inc()
        if result.tokens:
            self.qoe.labels(model).observe(result.qoe)
        if result.ttft_s is not None:
            self.ttft.labels(model).observe(result.ttft_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
