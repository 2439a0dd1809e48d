"""The gateway's end of the slack channel: which engines hear about which streams.

The channel itself (wire format, discovery, sender, receiver) is the :mod:`slack` package; this
module wires a gateway into it: every live stream's :meth:`~gateway.stream.Stream.slack_record`
goes to the slack endpoints of the gateway's upstreams, and the reporter's counters become
Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from core.slack import SlackRecord
from gateway.config import GatewayConfig
from slack.discovery import discover
from slack.sender import ReporterConfig, SlackReporter

if TYPE_CHECKING:
    from gateway.service import Gateway

__all__ = ["slack_endpoints", "start_reporter"]


def slack_endpoints(config: GatewayConfig) -> Callable[[], list[str]]:
    """The slack URLs of a gateway: ``slack_urls`` if given, else (with ``slack_discovery``) the
    adverts of its upstreams on this host, re-read on each call."""
    fixed = list(config.slack_urls)

    def resolve() -> list[str]:
        if fixed:
            return fixed
        if not config.slack_discovery:
            return []
        return [url for upstream in config.upstreams for url in discover(upstream)]

    return resolve


async def start_reporter(gw: Gateway) -> SlackReporter | None:
    """Start reporting the live streams of ``gw``; ``None`` (nothing started) when switched off.

    Its counters are exported as ``andes_gateway_slack_reporter_total{event}`` and
    ``andes_gateway_slack_endpoints_connected`` in the gateway's registry.
    """
    config = gw.config
    if not config.slack_urls and not config.slack_discovery:
        return None
    events = Counter("andes_gateway_slack_reporter", "Slack reporter events", ["event"],
                     registry=gw.metrics.registry)
    connected = Gauge("andes_gateway_slack_endpoints_connected",
                      "Engine slack endpoints connected now", registry=gw.metrics.registry)

    def on_event(name: str, n: int) -> None:
        if name == "connected":
            connected.inc(n)
        else:
            events.labels(name).inc(n)

    loop = asyncio.get_running_loop()
    streams = gw.table.streams

    def provider() -> list[SlackRecord]:
        now_s, wall_s = loop.time(), time.time()
        return [stream.slack_record(now_s, wall_s) for stream in streams.values()]

    reporter = SlackReporter(
        slack_endpoints(config), provider,
        ReporterConfig(interval_s=config.slack_interval_s, secret=config.slack_secret),
        on_event=on_event,
    )
    await reporter.start()
    return reporter
