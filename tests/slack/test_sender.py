"""The slack reporter against the real slack receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from support.wait import until

from core.slack import SlackRecord
from slack.receiver import SlackServer, SlackServerConfig
from slack.sender import ReporterConfig, SlackReporter


class Streams:
    """A stand-in for the gateway's live streams: records the provider hands out."""

    def __init__(self) -> None:
        self.delivered = 0
        self.calls = 0

    def __call__(self) -> list[SlackRecord]:
        self.calls += 1
        self.delivered += 1
        now = time.time()  # the gateway's wall clock, as the reporter stamps frames with it
        return [SlackRecord("s-1", self.delivered, 0, 4.8, False, now),
                SlackRecord("s-2", 3, 3, 3.3, True, now)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    server = SlackServer(SlackServerConfig())
    server.start()
    yield server
    server.stop()


async def test_reports_arrive_and_keep_arriving(server) -> None:
    streams = Streams()
    reporter = SlackReporter([server.url], streams, ReporterConfig(interval_s=0.01))
    await reporter.start()
    try:
        await until(lambda: server.counters()["frames"] >= 3)
    finally:
        await reporter.stop()
    reports = server.fresh_many(["s-1", "s-2"], now_s=server.clock(), stale_after_s=5.0)
    assert reports["s-2"].paused and reports["s-2"].tds_tok_s == 3.3
    assert reports["s-1"].delivered >= 3  # the latest report, not the first
    assert reporter.counters.frames_sent >= 3 and reporter.counters.records_sent >= 6
    assert reporter.counters.connected == 0  # stopped: nothing left open


async def test_it_waits_for_the_engine_and_reconnects_after_a_restart() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    streams = Streams()
    reporter = SlackReporter(
        [url], streams,
        ReporterConfig(
            interval_s=0.01, backoff_initial_s=0.01, backoff_max_s=0.05, queue_batches=2
        ),
    )
    await reporter.start()
    try:
        await until(lambda: reporter.counters.connect_failures >= 2)  # no engine yet
        # Batches meanwhile are bounded: the oldest are dropped, never piled up.
        await until(lambda: reporter.counters.dropped_batches >= 3)
        server = SlackServer(SlackServerConfig(port=port))
        server.start()
        try:
            await until(lambda: server.counters()["frames"] >= 2)
        finally:
            await asyncio.to_thread(server.stop)  # off the loop: the reporter answers the close
        failures = reporter.counters.connect_failures
        await until(lambda: reporter.counters.connect_failures > failures)  # engine gone again
        server = SlackServer(SlackServerConfig(port=port))
        server.start()
        try:
            await until(lambda: server.counters()["frames"] >= 2)
        finally:
            await asyncio.to_thread(server.stop)  # off the loop: the reporter answers the close
    finally:
        await reporter.stop()
    assert reporter.counters.reconnects >= 3


async def test_authenticates_with_the_shared_secret() -> None:
    server = SlackServer(SlackServerConfig(secret="k"))
    server.start()
    good = SlackReporter([server.url], Streams(), ReporterConfig(interval_s=0.01, secret="k"))
    bad = SlackReporter(
        [server.url], Streams(),
        ReporterConfig(interval_s=0.01, secret="wrong", backoff_initial_s=0.01, backoff_max_s=0.02),
    )
    try:
        await good.start()
        await bad.start()
        await until(lambda: server.counters()["frames"] >= 2)
        await until(lambda: server.counters()["unauthenticated"] >= 2)
    finally:
        await good.stop()
        await bad.stop()
        server.stop()
    assert bad.counters.frames_sent >= 0  # it may send before the server closes; none is stored
    assert server.counters()["records"] == 2 * server.counters()["frames"]


async def test_large_batches_are_split_into_frames(server) -> None:
    records = [SlackRecord(f"s{i}", 1, 0, 4.0, False, 1.0) for i in range(25)]
    reporter = SlackReporter([server.url], lambda: records,
                             ReporterConfig(interval_s=0.01, max_records_per_frame=10))
    await reporter.start()
    try:
        await until(lambda: server.counters()["frames"] >= 3)
    finally:
        await reporter.stop()
    assert reporter.counters.frames_sent >= 3
    assert reporter.counters.records_sent % 25 in (0, 10, 20)


async def test_a_failing_provider_is_counted_and_reporting_goes_on(server) -> None:
    calls = []

    def flaky() -> list[SlackRecord]:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("boom")
        return [SlackRecord("s", 1, 0, 4.0, False, 1.0)]

    events: list[tuple[str, int]] = []
    reporter = SlackReporter([server.url], flaky, ReporterConfig(interval_s=0.01),
                             on_event=lambda name, n: events.append((name, n)))
    await reporter.start()
    try:
        await until(lambda: server.counters()["frames"] >= 2)
    finally:
        await reporter.stop()
    assert reporter.counters.provider_errors >= 1
    assert ("provider_errors", 1) in events and ("frames_sent", 1) in events


async def test_endpoints_are_rediscovered(server) -> None:
    urls: list[str] = []
    reporter = SlackReporter(lambda: urls, Streams(),
                             ReporterConfig(interval_s=0.01, rediscover_s=0.01))
    await reporter.start()
    try:
        await asyncio.sleep(0.05)
        assert reporter.counters.frames_sent == 0  # nothing to report to yet
        urls.append(server.url)
        await until(lambda: server.counters()["frames"] >= 1)
    finally:
        await reporter.stop()


def test_config_errors_quote_the_value() -> None:
    with pytest.raises(ValueError, match="interval_s must be a finite number > 0, got 0"):
        ReporterConfig(interval_s=0)
    with pytest.raises(ValueError, match="queue_batches must be an integer >= 1, got 0"):
        ReporterConfig(queue_batches=0)


async def test_a_stopped_endpoint_ends_even_if_its_cancellation_was_swallowed() -> None:
    # Python 3.11's wait_for can hand a refused connect back instead of the CancelledError that
    # raced it (CPython gh-86296): the retry loop must still end once the endpoint is stopped.
    # Simulated here by stopping the endpoint without cancelling its task.
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    reporter = SlackReporter([url], Streams(), ReporterConfig(
        interval_s=0.01, backoff_initial_s=0.01, backoff_max_s=0.02))
    await reporter.start()
    try:
        await until(lambda: reporter.counters.connect_failures >= 2)
        endpoint = reporter._endpoints[url]
        endpoint.stopped = True  # what stop() sets before it cancels
        assert endpoint.task is not None
        await until(lambda: endpoint.task.done())  # type: ignore[union-attr]
        assert endpoint.task.cancelled()
    finally:
        await reporter.stop()
