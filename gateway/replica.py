"""One upstream engine as the gateway knows it: where it is, what it serves, whether it is up,
what it can continue exactly, and what it can serve (its learned :class:`CapacityModel`).

Health: an engine is taken out when a request cannot reach it or its ``GET /v1/models`` fails
``HEALTH_FAILURES`` times in a row — a check that only timed out while the engine kept
streaming tokens does not count (a one-slot server answers it between generations) — and put
back when the health check passes again
(:mod:`gateway.dispatch` runs the check). While it is out, no stream is sent to it; its live
streams have already failed on their own broken connections, or are ended with a clear error
when the health check declares it down (an engine that hangs breaks no connection).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.capacity import CapacityModel
from gateway.continuation import ContinuationKind

__all__ = ["HEALTH_FAILURES", "Replica", "TokenizeKind"]

HEALTH_FAILURES = 2
STALL_S = 60.0  # requests in flight and no progress for this long: the engine is stuck

# How the engine counts tokens for the gateway: vLLM's ``POST /tokenize``, llama-cpp-python's
# ``POST /extras/tokenize``, llama.cpp's C++ server ``POST /tokenize {content}``; None: none.
TokenizeKind = Literal["vllm", "llama_cpp_python", "llama_cpp"]


@dataclass(eq=False)
class Replica:
    base: str  # without a trailing /v1
    index: int = 0
    active: int = 0  # requests in flight
    models: list[dict[str, Any]] = field(default_factory=list)
    models_at_s: float = -1e18
    is_vllm: bool = False
    reachable: bool | None = None  # None: never asked
    healthy: bool = True  # routed to (False: taken out until a health check passes)
    failures: int = 0  # consecutive failed checks or connects
    refreshing: asyncio.Future[None] | None = None  # the GET /v1/models in flight, if any
    capacity: CapacityModel = field(default_factory=lambda: CapacityModel(now_s=time.monotonic()))
    continuation: ContinuationKind | None = None  # what the start-up probe found exact
    probe_note: str = "not probed"  # what the probe found, for /health and the log
    tokenize: TokenizeKind | None = None
    controlled: bool = False  # it runs the Andes scheduler (gateway/dispatch.py leaves it be)
    schedules_itself: bool = False  # its responses say so (slack.discovery.SCHEDULER_HEADER)
    streams: set[Any] = field(default_factory=set)  # live UpstreamStreams (ended when it fails)
    last_token_s: float = -1e18  # when it last answered a request or sent a token (monotonic)
    last_check_timed_out: bool = False  # the latest GET /v1/models timed out (not refused)

    def busy_not_dead(self, now_s: float) -> bool:
        """A check that timed out while requests are in flight and the engine made progress
        (answered a request or sent a token) within ``STALL_S`` is an engine too busy to answer
        it — llama-cpp-python answers GET /v1/models only between generations, after every
        request queued before it — not a dead one."""
        return (self.last_check_timed_out and self.active > 0
                and now_s - self.last_token_s <= STALL_S)

    def refreshed(self, done: asyncio.Future[None]) -> None:
        self.refreshing = None
        if not done.cancelled():
            done.exception()  # retrieved: every waiter got it, even if all were cancelled

    def serves(self, model: str) -> bool:
        return not self.models or any(m["id"] == model for m in self.models)

    def max_model_len(self, model: str) -> int | None:
        for m in self.models:
            if m["id"] == model and isinstance(m.get("max_model_len"), int):
                return int(m["max_model_len"])
        return None

    def opened(self) -> None:
        self.active += 1
        self.capacity.in_flight(self.active, time.monotonic())

    def closed(self) -> None:
        self.active -= 1
        self.capacity.in_flight(self.active, time.monotonic())

    def failed(self) -> bool:
        """A connect or check failed; True when that takes it out."""
        self.failures += 1
        self.reachable = False
        if self.healthy and self.failures >= HEALTH_FAILURES:
            self.healthy = False
            return True
        return False

    def ok(self) -> bool:
        """A check passed; True when that puts it back."""
        self.failures = 0
        self.reachable = True
        if not self.healthy:
            self.healthy = True
            return True
        return False
