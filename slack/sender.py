"""The slack reporter: sends every live stream's delivery slack to the engine's scheduler.

Every ``interval_s`` (75 ms by default) a collector task asks a *provider* — a plain callable the
gateway passes in, returning one :class:`slack.wire.SlackRecord` per live stream — for the
current records, and queues them for every slack endpoint (one per engine core). A sender task per
endpoint keeps a WebSocket open (reconnecting with exponential backoff and full jitter, answering
the HMAC challenge when a secret is set) and sends the queued batches as msgpack frames
(:func:`slack.wire.encode_batch`, stamped with the send time so the engine can age them).

Backpressure: the queue per endpoint holds at most ``queue_batches`` batches and drops the oldest —
each batch carries every live stream, so a newer one supersedes an older one entirely, and a slow
or absent engine never makes the gateway buffer more. Stream code never awaits the reporter: the
provider is called from the reporter's own task, and reads the pacers' state synchronously.

Uses the ``websockets`` client only (no aiohttp), so it runs in any asyncio program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from core.slack import SlackRecord
from slack.wire import (
    DEFAULT_MAX_RECORDS,
    SlackFrameError,
    decode_challenge,
    encode_batch,
    encode_hello,
)

__all__ = ["ReporterConfig", "ReporterCounters", "SlackReporter"]

logger = logging.getLogger(__name__)

Provider = Callable[[], Iterable[SlackRecord]]
"""Returns the current record of every live stream. Called from the reporter's task; must not
block (it reads in-memory pacer state)."""


@dataclass(frozen=True)
class ReporterConfig:
    """How often and where to report. Validated once; errors quote the bad value."""

    interval_s: float = 0.075  # one batch of every live stream per interval
    secret: str | None = None  # the engine's ANDES_SLACK_SECRET, if it has one
    queue_batches: int = 2  # batches waiting per endpoint; the oldest is dropped beyond
    max_records_per_frame: int = 4096  # a batch larger than this goes out as several frames
    backoff_initial_s: float = 0.1  # first reconnect delay; doubles per failure
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 5.0  # to open the socket and, with a secret, to authenticate
    send_timeout_s: float = 5.0  # a send blocked longer (engine not reading) drops the connection
    rediscover_s: float = 2.0  # how often the endpoint list is re-resolved
    heartbeat_s: float = 2.0  # an empty batch after this long with nothing to send: the
    # receiver closes connections that stay silent (slack/receiver.py idle_timeout_s, 10 s)

    def __post_init__(self) -> None:
        for name in ("interval_s", "backoff_initial_s", "backoff_max_s", "connect_timeout_s",
                     "send_timeout_s", "rediscover_s", "heartbeat_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s!r}) must be >= backoff_initial_s "
                f"({self.backoff_initial_s!r})"
            )
        if not isinstance(self.queue_batches, int) or self.queue_batches < 1:
            raise ValueError(f"queue_batches must be an integer >= 1, got {self.queue_batches!r}")
        if not 1 <= self.max_records_per_frame <= DEFAULT_MAX_RECORDS:
            raise ValueError(
                f"max_records_per_frame must be within 1..{DEFAULT_MAX_RECORDS}, got "
                f"{self.max_records_per_frame!r}"
            )
        if self.secret is not None and not self.secret:
            raise ValueError("secret must not be empty (leave it unset to disable auth)")


@dataclass(slots=True)
class ReporterCounters:
    """What the reporter did, summed over endpoints."""

    batches: int = 0  # batches collected
    frames_sent: int = 0
    records_sent: int = 0
    dropped_batches: int = 0  # dropped from a full queue (the engine was slow or unreachable)
    reconnects: int = 0  # connection attempts after the first
    connect_failures: int = 0
    provider_errors: int = 0
    connected: int = 0  # endpoints connected now

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Endpoint:
    url: str
    queue: deque[tuple[SlackRecord, ...]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    stopped: bool = False  # set before its task is cancelled: see SlackReporter._send_loop

    def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()


class SlackReporter:
    """Collects and sends slack batches; ``await start()`` then ``await stop()``.

    ``endpoints`` is a list of slack URLs, or a callable re-evaluated every ``rediscover_s``
    (discovery: an engine restarted on another ephemeral port is picked up). ``on_event(name, n)``
    is called with each counter increment — a hook for the gateway's metrics.
    """

    def __init__(
        self,
        endpoints: Sequence[str] | Callable[[], Sequence[str]],
        provider: Provider,
        config: ReporterConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, int], None] | None = None,
    ) -> None:
        self.config = config or ReporterConfig()
        self._resolve = endpoints if callable(endpoints) else (lambda: list(endpoints))
        self._provider = provider
        self._clock = clock  # wall clock: the engine only ever takes differences of it
        self._on_event = on_event
        self.counters = ReporterCounters()
        self._endpoints: dict[str, _Endpoint] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def urls(self) -> list[str]:
        return list(self._endpoints)

    def _count(self, name: str, n: int = 1) -> None:
        setattr(self.counters, name, getattr(self.counters, name) + n)
        if self._on_event is not None:
            try:
                self._on_event(name, n)
            except Exception:  # a metrics bug must not stop reporting
                logger.exception("reporter metrics hook failed on %r", name)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the reporter is already started")
        self._task = asyncio.create_task(self._collect(), name="andes-slack-reporter")

    async def stop(self) -> None:
        """Stop collecting and close every connection. Idempotent."""
        tasks = [t for t in (self._task, *(e.task for e in self._endpoints.values())) if t]
        if self._task is not None:
            self._task.cancel()
        self._task = None
        for endpoint in self._endpoints.values():
            endpoint.stop()
        if tasks:
            # Bounded: a shutdown never waits on the reporter for long, whatever a task does.
            done, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.warning("slack reporter task %s ended with %r", task.get_name(),
                                   task.exception())
            if pending:
                logger.warning("slack reporter: %d task(s) did not stop within 5 s",
                               len(pending))
        self._endpoints.clear()

    # -- collecting ------------------------------------------------------------------------------

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        next_resolve = -math.inf
        tick = loop.time()
        while True:
            if loop.time() >= next_resolve:
                self._sync_endpoints()
                next_resolve = loop.time() + self.config.rediscover_s
            if self._endpoints:
                self.collect_once()
            # Fixed-rate ticks; after a stall (a busy loop) skip the missed ones, don't burst.
            tick = max(tick + self.config.interval_s, loop.time())
            await asyncio.sleep(tick - loop.time())

    def collect_once(self) -> int:
        """Take one batch from the provider and queue it for every endpoint; return its size."""
        try:
            records = tuple(self._provider())
        except Exception:
            self._count("provider_errors")
            logger.exception("slack provider failed; this interval sends nothing")
            return 0
        if not records:
            return 0
        self._count("batches")
        for endpoint in self._endpoints.values():
            if len(endpoint.queue) >= self.config.queue_batches:
                endpoint.queue.popleft()
                self._count("dropped_batches")
            endpoint.queue.append(records)
            endpoint.wake.set()
        return len(records)

    def _sync_endpoints(self) -> None:
        try:
            urls = list(dict.fromkeys(self._resolve()))
        except Exception:
            logger.exception("resolving the slack endpoints failed; keeping %s", self.urls)
            return
        for url in list(self._endpoints):
            if url not in urls:
                self._endpoints.pop(url).stop()
                logger.info("slack endpoint %s gone", url)
        for url in urls:
            if url not in self._endpoints:
                endpoint = _Endpoint(url)
                endpoint.task = asyncio.create_task(self._send_loop(endpoint), name=f"slack {url}")
                self._endpoints[url] = endpoint
                logger.info("reporting slack to %s", url)

    # -- sending ---------------------------------------------------------------------------------

    async def _send_loop(self, endpoint: _Endpoint) -> None:
        cfg = self.config
        delay = cfg.backoff_initial_s
        attempts = 0
        while True:
            # Python 3.11's asyncio.wait_for can turn a cancellation that races with its inner
            # coroutine's own failure (a refused connect) into that failure (CPython gh-86296):
            # the except clauses below would then retry forever with the task "cancelling".
            # The flag set before cancel() ends the loop whatever wait_for did.
            if endpoint.stopped:
                raise asyncio.CancelledError
            if attempts:
                self._count("reconnects")
            attempts += 1
            try:
                ws = await asyncio.wait_for(self._connect(endpoint.url), cfg.connect_timeout_s)
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed,
                    SlackFrameError) as exc:
                self._count("connect_failures")
                # Full jitter: reconnecting gateways spread out instead of arriving together.
                wait = random.uniform(0.5, 1.0) * delay
                if endpoint.stopped:
                    raise asyncio.CancelledError from exc
                if attempts <= 3 or attempts % 50 == 0:
                    logger.warning("slack endpoint %s unreachable (%s); retry in %.2f s",
                                   endpoint.url, _describe(exc), wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, cfg.backoff_max_s)
                continue
            delay = cfg.backoff_initial_s
            self._count("connected")
            try:
                await self._pump(endpoint, ws)
            except (ConnectionClosed, OSError, TimeoutError) as exc:
                logger.warning("slack endpoint %s lost (%s)", endpoint.url, _describe(exc))
            finally:
                self._count("connected", -1)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)

    async def _connect(self, url: str) -> ClientConnection:
        ws = await connect(url, compression=None, open_timeout=None, max_size=1 << 16)
        if self.config.secret is not None:
            try:
                nonce = decode_challenge(await ws.recv())  # type: ignore[arg-type]
                await ws.send(encode_hello(self.config.secret, nonce))
            except BaseException:
                await ws.close()
                raise
        return ws

    async def _pump(self, endpoint: _Endpoint, ws: ClientConnection) -> None:
        """Send queued batches until the connection fails; also notice a close by the server."""
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            while True:
                if not endpoint.queue:
                    endpoint.wake.clear()
                    waiter = asyncio.ensure_future(endpoint.wake.wait())
                    done, _ = await asyncio.wait({waiter, closed}, timeout=self.config.heartbeat_s,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if closed.done():
                        raise ws.protocol.close_exc
                    if not done:  # nothing to report for a while: say we are still here
                        await asyncio.wait_for(ws.send(encode_batch((), sent_s=self._clock())),
                                               self.config.send_timeout_s)
                    continue
                records = endpoint.queue.popleft()
                step = self.config.max_records_per_frame
                for start in range(0, len(records), step):
                    chunk = records[start:start + step]
                    frame = encode_batch(chunk, sent_s=self._clock())
                    await asyncio.wait_for(ws.send(frame), self.config.send_timeout_s)
                    self._count("frames_sent")
                    self._count("records_sent", len(chunk))
        finally:
            closed.cancel()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
