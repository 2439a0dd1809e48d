"""Fixtures: the scripted engine and a gateway in front of it, both real servers on 127.0.0.1.

``upstream`` is a :class:`bench.scripted_engine.ScriptedEngine` (set ``upstream.script`` per test);
``make_gateway(**config_overrides)`` starts a gateway in front of it (stopped after the test);
``gateway`` is one with the defaults; ``spy`` records the control calls that reached its streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bench.scripted_engine import ScriptedEngine
from gateway.app import start
from gateway.auth import GATEWAY
from gateway.config import GatewayConfig
from gateway.service import Gateway
from support.spy import StreamSpy

__all__ = ["Running", "gateway", "make_gateway", "spy", "upstream"]


@dataclasses.dataclass
class Running:
    """A gateway running in the test's event loop."""

    url: str  # http://127.0.0.1:PORT
    runner: Any  # its aiohttp AppRunner
    config: GatewayConfig
    stopped: bool = False

    async def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM."""
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/stream"

    @property
    def app(self) -> Any:
        return self.runner.app

    @property
    def state(self) -> Gateway:
        """The gateway's state (its live streams are ``state.table.streams``)."""
        return self.runner.app[GATEWAY]


MakeGateway = Callable[..., Awaitable[Running]]


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedEngine]:
    async with ScriptedEngine() as engine:
        yield engine


@pytest.fixture
async def make_gateway(upstream: ScriptedEngine) -> AsyncIterator[MakeGateway]:
    """``await make_gateway(**config_overrides)`` → a running gateway in front of ``upstream``."""
    running: list[Running] = []

    async def make(**overrides: Any) -> Running:
        fields = {"upstreams": (upstream.url,), "port": 0, "shutdown_grace_s": 1.0,
                  "keepalive_s": 5.0, **overrides}
        config = GatewayConfig(**fields)
        runner, port = await start(config, "127.0.0.1", 0)
        r = Running(f"http://127.0.0.1:{port}", runner, config)
        running.append(r)
        return r

    yield make
    for r in running:
        await r.stop()


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Running:
    return await make_gateway()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> StreamSpy:
    """The control calls that reached the gateway's streams (the real methods still run)."""
    return StreamSpy(monkeypatch)
