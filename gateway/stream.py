"""One paced stream: engine tokens in, reader-paced text out, QoE measured at delivery.

A :class:`Stream` joins three things and is shared by every transport:

* a **reader task** that takes the engine's deltas as fast as they come and feeds the pacer — it
  never waits for the client, so a slow reader never slows the engine's connection;
* the **writer loop** (:meth:`Stream.run`, in the transport handler's task) that sleeps until the
  pacer's next due time or new input, hands ``due()`` chunks to the transport's :class:`Sink` and
  awaits its drain (bounded by ``slow_reader_timeout_s``). Sleeping writers share one timer per
  event loop (:class:`_Clock`), not one each: at thousands of streams, timer handles and their
  cancellations were a large share of the gateway's CPU;
* the control inputs (:meth:`ack`, :meth:`set_pace`, :meth:`pause`, :meth:`resume`,
  :meth:`cancel`, :meth:`abort`) from the WebSocket or the SSE ack endpoint.

Buffers are bounded: the pacer holds at most ``max_buffered_tokens`` unreleased tokens
(:class:`~gateway.pacer.PacerOverflow` ends the stream as a slow reader), and a transport write
that cannot drain in time ends it too. Whatever ends the stream, the engine request is closed at
once (which aborts it upstream).

QoE is measured where the text reaches the reader: in ``server`` and ``off`` pacing, at the time
each chunk is written; in ``client`` pacing, at the client's acknowledgements when it sends any
(tokens still unacknowledged at the end are counted as read from then on at the reader's pace),
else at the write times.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import secrets
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord
from gateway.errors import GatewayError, InvalidRequest, RateLimited, ShuttingDown, SlowReader
from gateway.pacer import Chunk, Pacer, PacerConfig, PacerOverflow, PacingMode
from gateway.upstream import UpstreamError, UpstreamStream

__all__ = ["Extra", "Sink", "Stream", "StreamHooks", "StreamResult", "StreamTable", "TokenMeta",
           "merge_logprobs", "new_stream_id", "transport_backlog"]


_FLUSH_TOK_S = 1e6  # "at once": a pace no buffer outlasts a frame at


def new_stream_id() -> str:
    """Unguessable: the id alone authorizes acks on the SSE side channel."""
    return secrets.token_hex(16)


def transport_backlog(transport: asyncio.BaseTransport | None) -> int:
    """Bytes ``transport`` holds unsent; 0 once it is closed (the next write fails, it cannot
    block). What a :class:`Sink` over a socket reports as its :meth:`Sink.backlog`."""
    # Duck-typed: uvloop's transports do not subclass asyncio.WriteTransport.
    size = getattr(transport, "get_write_buffer_size", None)
    if size is None or transport is None or transport.is_closing():
        return 0
    return int(size())


class Sink(Protocol):
    """Where a stream's text goes (an SSE response, a WebSocket)."""

    keepalive_s: float | None  # write a keep-alive after this long without a write; None = never

    def backlog(self) -> int:
        """Bytes written and not yet taken by the OS; 0 means the next write cannot block."""

    async def delta(self, chunk: Chunk) -> None:
        """Write one chunk and wait until the transport has taken it (drain)."""

    async def keepalive(self) -> None:
        """Write something harmless so proxies keep the connection open."""

    # Optional: ``async def extra(self, extra: Extra) -> None`` writes a non-text delta (tool
    # calls, reasoning) at once; a transport without it (the WebSocket protocol: text only) does
    # not get them.


@dataclass(slots=True)
class StreamResult:
    """How a stream ended."""

    reason: str  # finished | cancelled | disconnected | error
    finish_reason: str | None
    usage: dict[str, int]
    qoe: float
    ttft_s: float | None
    tokens: int  # tokens delivered
    error: GatewayError | None = None

    def andes(self, stream_id: str) -> dict[str, Any]:
        """The ``andes`` field of the final HTTP chunk."""
        return {"stream_id": stream_id, "qoe": round(self.qoe, 6),
                "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
                "tokens": self.tokens}


@dataclass(slots=True)
class StreamHooks:
    """Metric callbacks, so this module does not depend on the metrics backend."""

    lateness: Callable[[float], None] = lambda s: None
    upstream_error: Callable[[str], None] = lambda kind: None
    # Seconds per token between two writes to the reader: inter-token latency as delivered.
    inter_token: Callable[[float], None] = lambda s: None


@dataclass(frozen=True, slots=True)
class TokenMeta:
    """What a token carries beside its text, kept only for streams that need it (``rich``)."""

    choice: int  # the choice it belongs to (requests with n > 1)
    text: str  # the token's own text (a written chunk joins several choices' tokens)
    logprobs: Any  # the engine's logprobs object for this token's delta, as it sent it


@dataclass(frozen=True, slots=True)
class Extra:
    """A non-text delta (tool calls, reasoning): written at once, after the text before it."""

    position: int  # tokens fed before it: they are written first
    choice: int
    delta: dict[str, Any]  # the engine's delta without its content (tool_calls, reasoning_...)


class Stream:
    """One stream's state. Create, :meth:`attach` the engine response, then ``await run(sink)``."""

    def __init__(self, stream_id: str, spec: QoESpec, pacer_config: PacerConfig, *,
                 slow_reader_timeout_s: float, hooks: StreamHooks | None = None,
                 model: str = "", rich: bool = False) -> None:
        self.id = stream_id
        self.spec = spec
        self.model = model
        # rich: keep each token's choice and logprobs beside its text (n > 1, logprobs), for
        # the transport to render with it (meta_for); else only the text is kept.
        self.rich = rich
        self._meta: deque[TokenMeta] = deque()
        self._carried_logprobs: dict[int, Any] = {}  # by choice: of empty deltas, for the next
        self._extras: deque[Extra] = deque()
        self.finish_reasons: dict[int, str] = {}  # by choice
        self._drain_by_s: float | None = None  # shutdown: everything fed is written by then
        self._last_write_s: float | None = None
        self.mode: PacingMode = pacer_config.mode
        self.pacer = Pacer(pacer_config)
        self._loop = asyncio.get_running_loop()
        self.arrival_s = self._loop.time()
        self._sent_qoe = QoETracker(spec, self.arrival_s)  # at write times
        self._acked_qoe = QoETracker(spec, self.arrival_s)  # at acknowledgement times
        self._acked = 0
        self._slow_reader_timeout_s = slow_reader_timeout_s
        self._hooks = hooks or StreamHooks()
        self._upstream: UpstreamStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._upstream_done = False
        self._waiter: asyncio.Future[None] | None = None
        self._clock = _Clock.of(self._loop)
        self._wake_at_s: float | None = None  # the deadline of this stream's entry in the clock
        self._end_reason: str | None = None  # set by cancel()/abort()
        self.error: GatewayError | None = None
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.first_token_s: float | None = None
        self.result: StreamResult | None = None

    # -- engine side ----------------------------------------------------------------------------

    def attach(self, upstream: UpstreamStream) -> None:
        """Start taking the engine's tokens (in a task of its own)."""
        self._upstream = upstream
        self._reader = asyncio.create_task(self._read(), name=f"andes-upstream-{self.id}")

    async def _read(self) -> None:
        assert self._upstream is not None
        try:
            async for event in self._upstream.events():
                if event.text is not None:
                    self.pacer.feed((event.text,), self._loop.time())
                    if self.rich:
                        self._meta.append(TokenMeta(event.choice, event.text,
                                                    self._logprobs(event)))
                elif self.rich and event.logprobs is not None:
                    carried = self._carried_logprobs
                    carried[event.choice] = _merge_logprobs(carried.get(event.choice),
                                                            event.logprobs)
                if event.extra:
                    self._extras.append(Extra(self.pacer.fed, event.choice, event.extra))
                if event.finish_reason is not None:
                    self.finish_reasons[event.choice] = event.finish_reason
                    if event.choice == 0:
                        self.finish_reason = event.finish_reason
                if event.usage is not None:
                    self.usage = event.usage
                self._wake()
        except UpstreamError as exc:
            self._hooks.upstream_error("mid_stream")
            self._fail(exc)
        except PacerOverflow as exc:
            self._fail(SlowReader(f"the reader fell too far behind: {exc}"))
        except Exception as exc:  # a gateway bug: end the stream, keep the context in the log
            self._fail(GatewayError(f"internal error while reading the engine's stream: {exc!r}"))
            raise
        finally:
            self._upstream_done = True
            if not self.pacer.closed:
                self.pacer.close()
            self._wake()

    def _logprobs(self, event: Any) -> Any:
        """The event's logprobs, after those of its choice's empty deltas before it (a token
        vLLM held back — a partial character, a possible stop string — comes out with the next)."""
        carried = self._carried_logprobs.pop(event.choice, None)
        return event.logprobs if carried is None else _merge_logprobs(carried, event.logprobs)

    def meta_for(self, chunk: Chunk) -> list[TokenMeta]:
        """The metadata of ``chunk``'s tokens (``rich`` streams; call once per written chunk, in
        order)."""
        return [self._meta.popleft() for _ in range(min(chunk.count, len(self._meta)))]

    def _stop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    # -- control --------------------------------------------------------------------------------

    def ack(self, consumed: int) -> None:
        """The client has shown ``consumed`` tokens. Raises :class:`InvalidRequest` beyond sent."""
        now = self._loop.time()
        try:
            self.pacer.ack(consumed)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="consumed") from None
        if consumed > self._acked:
            self._acked_qoe.add(now, consumed - self._acked)
            self._acked = consumed
        self._wake()

    def set_pace(self, tds_tok_s: float) -> None:
        try:
            self.pacer.set_pace(tds_tok_s, self._loop.time())
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="tds") from None
        self._wake()

    def pause(self) -> None:
        self.pacer.pause(self._loop.time())
        self._wake()

    def resume(self) -> None:
        self.pacer.resume(self._loop.time())
        self._wake()

    def cancel(self, reason: str = "cancelled") -> None:
        """End the stream now without an error (the client asked, or went away)."""
        if self._end_reason is None:
            self._end_reason = reason
        self._stop_upstream()
        self._wake()

    def drain_by(self, deadline_s: float) -> None:
        """Shutdown: write everything the engine has produced (and produces meanwhile) by
        ``deadline_s`` on the event loop's clock, faster than the reader's pace if need be — the
        text exists; dropping it would be worse than a reader seeing it sooner."""
        self._drain_by_s = deadline_s
        self._wake()

    def abort(self, error: GatewayError) -> None:
        """End the stream now with ``error`` (shutdown, limits)."""
        self._fail(error)
        self._stop_upstream()

    def _fail(self, error: GatewayError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    # -- state ----------------------------------------------------------------------------------

    def buffered(self) -> int:
        return self.pacer.buffered(self._loop.time())

    def slack_record(self, now_s: float, wall_s: float) -> SlackRecord:
        """This stream's delivery for the engine's scheduler (:mod:`core.slack` defines it).

        ``delivered`` is what the gateway received from the engine (``pacer.fed``), ``consumed``
        what the reader has read — the client's acknowledgements when it sends them, else the
        pacer's reading model — so their difference is the whole buffer between the engine and
        the reader's eyes, at the gateway and at the client. ``now_s`` is the pacer's clock (the
        event loop's), ``wall_s`` the same instant on the wall clock, which goes on the wire.
        """
        pacer = self.pacer
        fed = pacer.fed
        return SlackRecord(
            stream_id=self.id,
            delivered=fed,
            consumed=min(pacer.consumed(now_s), fed),
            tds_tok_s=float(pacer.tds_tok_s),
            paused=bool(pacer.paused),
            t_s=wall_s,
        )

    # -- the writer loop ------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep_until(self, deadline_s: float) -> None:
        # A bare future and the shared clock: no timer handle per sleep, nothing to cancel when
        # input wakes us first (the clock skips entries that are no longer this stream's).
        waiter = self._loop.create_future()
        self._waiter = waiter
        if math.isfinite(deadline_s) and (self._wake_at_s is None
                                          or self._wake_at_s > deadline_s):
            self._wake_at_s = deadline_s
            self._clock.wake_at(deadline_s, self)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_clock(self, deadline_s: float) -> None:
        if self._wake_at_s == deadline_s:
            self._wake_at_s = None
            self._wake()

    async def run(self, sink: Sink) -> StreamResult:
        """Write the stream to ``sink`` until it ends; return how it ended. Always closes the
        engine request, also when cancelled (the client went away)."""
        last_write_s = self._loop.time()
        reason = "finished"
        try:
            while True:
                if self.error is not None:
                    reason = "error"
                    break
                if self._end_reason is not None:
                    reason = self._end_reason
                    break
                now = self._loop.time()
                if await self._write_due(sink, now):
                    last_write_s = now
                if self.pacer.done and self._upstream_done and not self._extras:
                    if self.error is not None:
                        reason = "error"
                    break
                deadline = self.pacer.next_due_s()
                if deadline is None:
                    deadline = math.inf
                if sink.keepalive_s is not None:
                    deadline = min(deadline, last_write_s + sink.keepalive_s)
                if self._drain_by_s is not None and self.pacer.fed > self.pacer.sent:
                    deadline = min(deadline, self._drain_by_s)
                if deadline > now:
                    await self._sleep_until(deadline)
                if (sink.keepalive_s is not None and self.error is None
                        and self._loop.time() - last_write_s >= sink.keepalive_s):
                    await self._guarded(sink.keepalive(), sink)
                    last_write_s = self._loop.time()
        except (ConnectionError, asyncio.CancelledError) as exc:
            # A reader who asked to stop and then closed the connection stopped; else gone.
            reason = "cancelled" if self._end_reason == "cancelled" else "disconnected"
            self._stop_upstream()
            if isinstance(exc, asyncio.CancelledError):
                self.finish(reason)
                raise
        except SlowReader as exc:
            self._fail(exc)
            reason = "error"
        finally:
            self._stop_upstream()
        return self.finish(reason)

    async def _write_due(self, sink: Sink, now: float) -> bool:
        """Write what is due at ``now``: non-text deltas (after the text fed before them), then
        the paced text. Returns whether anything was written."""
        wrote = False
        while self._extras:
            extra = self._extras[0]
            for chunk in self.pacer.release_until(extra.position, now):
                await self._write(sink, chunk, now)
                wrote = True
            self._extras.popleft()
            write_extra = getattr(sink, "extra", None)
            if write_extra is not None:  # transports without non-text deltas drop them
                await self._guarded(write_extra(extra), sink)
                wrote = True
        if self._drain_by_s is not None:
            self._hurry(now)
        for chunk in self.pacer.due(now):
            await self._write(sink, chunk, now)
            wrote = True
        return wrote

    def _hurry(self, now: float) -> None:
        """Shutdown: raise the pace so what is buffered is written by the drain deadline."""
        assert self._drain_by_s is not None
        backlog = self.pacer.fed - self.pacer.sent
        if backlog <= 0:
            return
        if self.pacer.paused:
            self.pacer.resume(now)
        left_s = self._drain_by_s - now - self.pacer.config.frame_s
        needed = backlog / left_s if left_s > 0 else math.inf
        if needed > self.pacer.tds_tok_s:
            self.pacer.set_pace(min(needed, _FLUSH_TOK_S), now)

    async def _guarded(self, write: Any, sink: Sink) -> None:
        if sink.backlog() == 0:
            # The transport has taken everything so far: this write cannot wait on a drain, so it
            # needs no timer (one per write would cost as much as the write).
            await write
            return
        try:
            async with asyncio.timeout(self._slow_reader_timeout_s):
                await write
        except TimeoutError:
            raise SlowReader(f"the client did not take the text within "
                             f"{self._slow_reader_timeout_s} s") from None

    async def _write(self, sink: Sink, chunk: Chunk, now: float) -> None:
        if self.mode == "server":
            self._hooks.lateness(max(now - chunk.due_s, 0.0))
        await self._guarded(sink.delta(chunk), sink)
        if self.rich:  # a sink that renders text only (the WebSocket) leaves the metadata
            while len(self._meta) > self.pacer.fed - self.pacer.sent:
                self._meta.popleft()
        if self.first_token_s is None:
            self.first_token_s = now
        elif self._last_write_s is not None and chunk.count:
            self._hooks.inter_token((now - self._last_write_s) / chunk.count)
        self._last_write_s = now
        self._sent_qoe.add(now, chunk.count)

    def finish(self, reason: str) -> StreamResult:
        """How the stream ended (also for a transport that failed before :meth:`run`)."""
        if self.result is not None:
            return self.result
        tracker = self._sent_qoe
        if self.mode == "client" and self._acked > 0:
            tracker = self._acked_qoe
            unacked = self.pacer.sent - self._acked
            if unacked > 0:
                tracker.add(self._loop.time(), unacked)
                self._acked = self.pacer.sent
        ttft = None if self.first_token_s is None else self.first_token_s - self.arrival_s
        self.result = StreamResult(reason=reason, finish_reason=self.finish_reason,
                                   usage=dict(self.usage), qoe=tracker.qoe(), ttft_s=ttft,
                                   tokens=self.pacer.sent, error=self.error)
        return self.result


def _merge_logprobs(a: Any, b: Any) -> Any:
    """Two logprobs objects of one choice as one, in order: chat's ``{"content": [...]}`` lists
    are joined, as are the completions API's parallel lists (``tokens``, ``token_logprobs``,
    ...); anything else keeps the later one."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        out = dict(a)
        for key, value in b.items():
            mine = out.get(key)
            out[key] = mine + value if isinstance(mine, list) and isinstance(value, list) \
                else value
        return out
    return b


def merge_logprobs(items: Iterable[Any]) -> Any:
    """The logprobs of consecutive tokens of one choice as one object (None if none had any)."""
    out = None
    for item in items:
        out = _merge_logprobs(out, item)
    return out


class _Clock:
    """One timer for all the sleeping writers of an event loop: a heap of (deadline, seq, stream).

    An entry whose stream has since been woken by input, or has asked for an earlier deadline, is
    skipped when it comes up (:meth:`Stream._on_clock` compares deadlines), so sleeping and
    waking cost a heap push and nothing else."""

    _clocks: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock]] = \
        weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Stream]] = []
        self._seq = itertools.count()  # ties never compare streams
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_s = math.inf

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Clock:
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    def wake_at(self, deadline_s: float, stream: Stream) -> None:
        heapq.heappush(self._heap, (deadline_s, next(self._seq), stream))
        if deadline_s < self._timer_at_s:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at_s = deadline_s
            self._timer = self._loop.call_at(deadline_s, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at_s = None, math.inf
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline_s, _, stream = heapq.heappop(heap)
            stream._on_clock(deadline_s)
        if heap:
            self._timer_at_s = heap[0][0]
            self._timer = self._loop.call_at(self._timer_at_s, self._fire)


@dataclass(slots=True)
class StreamTable:
    """The live streams of one gateway: the concurrency limit and the shutdown switch."""

    max_streams: int
    streams: dict[str, Stream] = field(default_factory=dict)
    reserved: int = 0  # admitted, not yet registered (waiting for the engine to answer)
    draining: bool = False
    drain_deadline_s: float | None = None  # shutdown: text written by then (loop clock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self) -> None:
        """Reserve a slot or raise :class:`RateLimited` / :class:`ShuttingDown`."""
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another instance")
        if len(self.streams) + self.reserved >= self.max_streams:
            raise RateLimited(f"too many concurrent streams (limit {self.max_streams}); "
                              "retry later")
        self.reserved += 1
        self.idle.clear()

    def register(self, stream: Stream) -> None:
        self.reserved -= 1
        self.streams[stream.id] = stream
        if self.drain_deadline_s is not None:  # admitted just before the shutdown began
            stream.drain_by(self.drain_deadline_s)

    def release(self, stream_id: str | None = None) -> None:
        """Free a slot: the registered stream ``stream_id``, or a reservation if ``None``."""
        if stream_id is None:
            self.reserved -= 1
        else:
            self.streams.pop(stream_id, None)
        if not self.streams and self.reserved == 0:
            self.idle.set()

    def __len__(self) -> int:
        return len(self.streams) + self.reserved

    def buffered_tokens(self) -> int:
        return sum(s.buffered() for s in self.streams.values())

    async def drain(self, grace_s: float) -> None:
        """Refuse new streams; give live ones ``grace_s`` to finish; then end the rest.

        Text the engine has produced is written within the grace, faster than the reader's pace
        if need be (:meth:`Stream.drain_by`); a stream whose engine is not done by then is ended
        with what it had."""
        self.draining = True
        loop = asyncio.get_running_loop()
        # A margin before the grace runs out, for the last writes to reach the client.
        self.drain_deadline_s = loop.time() + max(grace_s - 0.5, grace_s * 0.5)
        for stream in list(self.streams.values()):
            stream.drain_by(self.drain_deadline_s)
        if len(self):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), grace_s)
        for stream in list(self.streams.values()):
            stream.abort(ShuttingDown("the gateway is shutting down"))
        if len(self):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 5.0)
