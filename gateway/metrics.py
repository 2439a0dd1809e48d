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

The gateway's own scheduling (gateway/admission.py, gateway/dispatch.py):

* ``andes_gateway_queue_length`` — streams waiting in the gateway's queue now (gauge)
* ``andes_gateway_queue_wait_seconds{outcome}`` — how long requests waited (histogram; outcome
  ``direct`` = sent at once, ``admitted``, ``expired`` = 429 after ``queue_timeout_s``, ``full``)
* ``andes_gateway_parks_total`` / ``andes_gateway_resumes_total`` — streams parked and resumed
* ``andes_gateway_park_refused_total`` — parks called off because the seam was not exact then
* ``andes_gateway_resume_ttft_seconds`` — a continuation's time to first token: what a park costs
* ``andes_gateway_seams_total{result}`` — parked streams' seams as checked: ``ok``, ``defect``,
  ``unchecked`` (gateway/usage.py ``check_seams``)
* ``andes_gateway_upstream_capacity_streams{upstream}`` — the learned capacity: streams each
  served at least at the default reading pace (gauge)
* ``andes_gateway_upstream_token_latency_seconds{upstream,k}`` — learned per-stream seconds per
  token at 1 and at the current number in flight (gauge; ``k`` = ``1`` or ``now``)
* ``andes_gateway_upstream_in_flight{upstream}`` / ``andes_gateway_upstream_healthy{upstream}``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.stream import StreamHooks, StreamResult

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_QOE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Readers' paces put delivered gaps around 0.1–0.4 s per token; engines' around 0.01–0.1 s.
_ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The gateway metrics. ``active`` and ``buffered`` are read from live state when scraped."""

    def __init__(self, active: Callable[[], float], buffered: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total, resident memory, open fds: on a machine the engine shares,
        # what the gateway's CPU takes from it is measured, not guessed.
        ProcessCollector(registry=r)
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

        self.queue_wait = Histogram("andes_gateway_queue_wait_seconds",
                                    "Time requests waited in the gateway's queue", ["outcome"],
                                    buckets=_WAIT_BUCKETS, registry=r)
        self.parks = Counter("andes_gateway_parks", "Streams parked (upstream aborted)",
                             registry=r)
        self.resumes = Counter("andes_gateway_resumes", "Parked streams resumed", registry=r)
        self.park_refused = Counter("andes_gateway_park_refused",
                                    "Parks called off: the seam was not exact", registry=r)
        self.seams = Counter("andes_gateway_seams", "Seams of parked streams, as checked",
                             ["result"], registry=r)
        self.admissions = Counter("andes_gateway_admissions",
                                  "Streams sent upstream (first requests and resumes), by the"
                                  " admission rule that let them go", ["rule"], registry=r)
        self.resume_ttft = Histogram("andes_gateway_resume_ttft_seconds",
                                     "Time to first token of a continuation",
                                     buckets=_TTFT_BUCKETS, registry=r)

    def watch(self, queue_length: Callable[[], float], replicas: Sequence[Any],
              tds_tok_s: float) -> None:
        """Gauges read from the scheduler and the replicas when scraped."""
        r = self.registry
        g = Gauge("andes_gateway_queue_length", "Streams waiting in the gateway's queue",
                  registry=r)
        g.set_function(queue_length)
        cap = Gauge("andes_gateway_upstream_capacity_streams",
                    "Learned capacity: streams served at the default reading pace",
                    ["upstream"], registry=r)
        lat = Gauge("andes_gateway_upstream_token_latency_seconds",
                    "Learned per-stream seconds per token", ["upstream", "k"], registry=r)
        flight = Gauge("andes_gateway_upstream_in_flight", "Requests open on the upstream",
                       ["upstream"], registry=r)
        healthy = Gauge("andes_gateway_upstream_healthy", "1 while the upstream is routed to",
                        ["upstream"], registry=r)
        for rep in replicas:
            name = rep.base
            cap.labels(name).set_function(lambda rep=rep: rep.capacity.capacity(tds_tok_s))
            lat.labels(name, "1").set_function(lambda rep=rep: rep.capacity.token_latency_s(1))
            lat.labels(name, "now").set_function(
                lambda rep=rep: rep.capacity.token_latency_s(max(rep.active, 1)))
            flight.labels(name).set_function(lambda rep=rep: rep.active)
            healthy.labels(name).set_function(lambda rep=rep: float(rep.healthy))

    def dispatch_hooks(self) -> Any:
        from gateway.dispatch import DispatchHooks

        metrics = self

        class _Hooks(DispatchHooks):
            def queued(self, wait_s: float, outcome: str) -> None:
                metrics.queue_wait.labels(outcome).observe(wait_s)

            def parked(self) -> None:
                metrics.parks.inc()

            def resumed(self) -> None:
                metrics.resumes.inc()

            def resume_cost(self, ttft_s: float) -> None:
                metrics.resume_ttft.observe(ttft_s)

            def seam_refused(self) -> None:
                metrics.park_refused.inc()

            def admitted(self, rule: str | None) -> None:
                metrics.admissions.labels(rule or "unknown").inc()

        return _Hooks()

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
