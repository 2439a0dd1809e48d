"""Fixtures: a scripted engine and a gateway in front of it, both real servers on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from scripted_upstream import ScriptedUpstream

from gateway.app import start
from gateway.config import GatewayConfig


@dataclasses.dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    runner: Any
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


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    up = ScriptedUpstream()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
async def make_gateway(upstream: ScriptedUpstream) -> AsyncIterator[Callable[..., Any]]:
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
async def gateway(make_gateway: Callable[..., Any]) -> Running:
    return await make_gateway()
