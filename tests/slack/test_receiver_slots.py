"""The receiver's connection slots cannot be held by idle connections (issue 12, item 6): every
connection must speak within ``idle_timeout_s``, one address holds at most
``max_connections_per_peer``, and a full house makes room for a newcomer by closing the oldest
connection that has not proven itself — so the real gateway always gets in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import pytest
from support.wait import until
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from core.slack import SlackRecord
from slack.receiver import SlackServer, SlackServerConfig
from slack.sender import ReporterConfig, SlackReporter


@pytest.fixture
def make_server() -> Iterator[Callable[..., SlackServer]]:
    servers: list[SlackServer] = []

    def make(**options: object) -> SlackServer:
        server = SlackServer(SlackServerConfig(**options))  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


async def _closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 20)
    return ws.close_code


async def test_an_idle_connection_is_closed_without_a_secret(make_server) -> None:
    server = make_server(idle_timeout_s=0.5)
    async with connect(server.url) as ws:
        assert await _closed_with(ws) == 1008
    assert server.counters()["idle"] == 1


async def test_idle_connections_cannot_keep_the_gateway_out(make_server) -> None:
    server = make_server(max_connections=8, idle_timeout_s=60)
    squatters = [await connect(server.url) for _ in range(8)]
    records = [SlackRecord("s1", 10, 4, 4.0, False, 0.0)]
    reporter = SlackReporter([server.url], lambda: records, ReporterConfig(interval_s=0.05))
    await reporter.start()
    try:
        await until(lambda: server.counters()["records"] >= 1, "the reporter's batch stored", 20)
        assert server.counters()["evicted_connections"] >= 1
    finally:
        await reporter.stop()
        for ws in squatters:
            await ws.close()


async def test_one_address_holds_at_most_its_share(make_server) -> None:
    server = make_server(max_connections_per_peer=2, idle_timeout_s=60)
    async with connect(server.url) as a, connect(server.url) as b:
        third = await connect(server.url)
        assert await _closed_with(third) == 1013
        assert server.counters()["refused_connections"] == 1
        del a, b


async def test_a_quiet_reporter_keeps_its_connection_with_heartbeats(make_server) -> None:
    server = make_server(idle_timeout_s=0.6)
    reporter = SlackReporter([server.url], list, ReporterConfig(heartbeat_s=0.1))
    await reporter.start()
    try:
        await until(lambda: reporter.counters.connected == 1, "connected", 20)
        await asyncio.sleep(2.0)  # several idle timeouts, nothing to report
        assert server.counters()["idle"] == 0
        assert reporter.counters.reconnects == 0
        assert server.counters()["frames"] == 0  # heartbeats are not batches
    finally:
        with contextlib.suppress(Exception):
            await reporter.stop()
