"""One paced stream: engine tokens in, reader-paced text out, QoE measured at delivery.

A :class:`Stream` joins three things and is shared by every transport:

* a **reader task** that takes the engine's deltas as fast as they come and feeds the pacer — it
  never waits for the client, so a slow reader never slows the engine's connection;
* the **writer loop** (:meth:`Stream.run`, in the transport handler's task) that sleeps until the
  pacer's next due time or new input, hands ``due()`` chunks to the transport's :class:`Sink` and
  awaits its drain (bounded by ``slow_reader_timeout_s``). Sleeping writers share one timer per
  event loop (:class:`_Clock`), not one each: at thousands of streams, timer handles and their
  cancellations were a large share of the gateway's CPU. While the writer sleeps, a due time or
  new input is served without waking it when the sink can take a write at once
  (:meth:`Sink.ready_now`: nothing waiting in the socket's buffer): the clock's callback writes
  and re-arms (:meth:`Stream._pump`), so a paced write costs no task switch, no future and no
  pass through the writer loop. The writer is woken only for what needs it: backpressure, the
  end, an error, a keep-alive;
* the control inputs (:meth:`ack`, :meth:`set_pace`, :meth:`pause`, :meth:`resume`,
  :meth:`cancel`, :meth:`abort`) from the WebSocket or the SSE ack endpoint.

A stream may be served by several engine requests in turn (*segments*): the gateway's scheduler
can :meth:`park` it — abort its engine request while its reader lives off the buffer — and later
:meth:`attach` a continuation (:mod:`gateway.continuation`). The pacer, the QoE trackers and the
reader never see the seam: one stream, one usage total, one QoE. :attr:`progress` keeps what the
continuation needs (the prompt's and the generated tokens' ids where the engine returns them, the
generated text, the count).

Buffers are bounded: the pacer holds at most ``max_buffered_tokens`` unreleased tokens and
``max_buffered_bytes`` bytes (:class:`~gateway.pacer.PacerOverflow` ends the stream as a slow
reader), and a transport write that cannot drain within ``slow_reader_timeout_s`` ends it too (its
connection is aborted: a reader that does not read cannot be told). An engine that says nothing
for ``stall_timeout_s`` while the reader waits on it ends the stream with ``upstream_timeout``.
Both clocks are kept by one :class:`_Watchdog` per event loop, not a timer per write or per token.
Whatever ends the stream, the engine request is closed at once (which aborts it upstream).

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
from core.slack import slack_s as _slack_s
from gateway.continuation import Progress
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    RateLimited,
    ShuttingDown,
    SlowReader,
    UpstreamTimeout,
)
from gateway.pacer import Chunk, Pacer, PacerConfig, PacerOverflow, PacingMode
from gateway.upstream import UpstreamError, UpstreamStream

__all__ = ["Extra", "Sink", "Stream", "StreamHooks", "StreamResult", "StreamTable", "TokenMeta",
           "abort_transport", "merge_logprobs", "new_stream_id", "transport_backlog"]


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


def abort_transport(transport: asyncio.BaseTransport | None) -> None:
    """Close ``transport`` at once, dropping what it holds unsent (what a :class:`Sink` over a
    socket does in :meth:`Sink.abort`): its blocked write fails, the handler ends."""
    abort = getattr(transport, "abort", None)
    if abort is not None and transport is not None and not transport.is_closing():
        abort()


class Sink(Protocol):
    """Where a stream's text goes (an SSE response, a WebSocket)."""

    keepalive_s: float | None  # write a keep-alive after this long without a write; None = never

    def backlog(self) -> int:
        """Bytes written and not yet taken by the OS; 0 means the next write cannot block."""

    async def delta(self, chunk: Chunk) -> None:
        """Write one chunk and wait until the transport has taken it (drain)."""

    async def keepalive(self) -> None:
        """Write something harmless so proxies keep the connection open."""

    def ready_now(self) -> bool:
        """Whether :meth:`write_now` may be used: a write now can neither block nor pile up."""

    def write_now(self, chunk: Chunk) -> None:
        """Write one chunk without waiting (only after :meth:`ready_now` said so)."""

    def abort(self) -> None:
        """Drop the connection now (a write blocked too long: the reader does not read)."""

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
    # Where each usage number came from: "engine", "ids" (token ids the engine returned),
    # "counted" (deltas the gateway counted), "tokenize" (the engine's tokenize endpoint),
    # "estimate" (characters / 4) — docs/continuation.md, "Usage".
    usage_source: dict[str, str] = field(default_factory=dict)
    parks: int = 0  # times the stream was parked (and resumed)
    queued_s: float = 0.0  # time spent in the gateway's queue before its first engine request

    def andes(self, stream_id: str) -> dict[str, Any]:
        """The ``andes`` field of the final HTTP chunk."""
        out: dict[str, Any] = {
            "stream_id": stream_id, "qoe": round(self.qoe, 6),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
            "tokens": self.tokens}
        if self.usage_source:
            out["usage_source"] = dict(self.usage_source)
        if self.parks:
            out["parks"] = self.parks
        if self.queued_s:
            out["queued_s"] = round(self.queued_s, 6)
        return out


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
                 model: str = "", stall_timeout_s: float = math.inf,
                 rich: bool = False) -> None:  # fmt: skip
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
        self._last_text_s: float | None = None  # the latest text write, for inter-token time
        self.mode: PacingMode = pacer_config.mode
        self.pacer = Pacer(pacer_config)
        self._loop = asyncio.get_running_loop()
        self.arrival_s = self._loop.time()
        self._sent_qoe = QoETracker(spec, self.arrival_s)  # at write times
        self._acked_qoe = QoETracker(spec, self.arrival_s)  # at acknowledgement times
        self._acked = 0
        self._slow_reader_timeout_s = slow_reader_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._starving_since_s: float | None = None  # reader waiting on a silent engine since
        self._writing_sink: Sink | None = None  # the sink of a write in progress
        self._sink: Sink | None = None  # the sink of the running writer loop
        self._pump_soon = False  # a _wake_now is scheduled
        self._last_write_s = self.arrival_s  # for keep-alives
        self._watchdog = _Watchdog.of(self._loop)
        self.owner: int | None = None  # which API key opened it (index), None: no keys
        self._hooks = hooks or StreamHooks()
        self._upstream: UpstreamStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._upstream_done = False
        # Segments (parking): what the engine produced so far, and the usage of the last one.
        self.arrivals = QoETracker(spec, self.arrival_s)  # at the gateway: the QoE to predict
        self.progress = Progress()
        self.seam_ok = True  # no text held back by the engine at this point (a clean seam)
        self.parks = 0
        self.queued_s = 0.0
        self.replica: Any = None  # the Replica of the latest segment
        self._segment_start = 0  # progress.tokens when the current segment started
        self._last_usage: dict[str, int] | None = None  # the final segment's engine usage
        self._parking = False
        self._expect_prompt: list[int] | None = None  # a continuation's prompt, to check
        self.seam_defects = 0  # continuations whose engine-side prompt was not what was sent
        self.prompt_count: asyncio.Future[int | None] | None = None  # gateway/usage.py
        self.on_end: Callable[[Stream], None] | None = None  # the scheduler forgets it
        # The engine request ended (done or failed, not parked): its upstream slot is free
        # though the reader may read on for many seconds.
        self.on_upstream_end: Callable[[Stream], None] | None = None
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

    def attach(self, upstream: UpstreamStream, expect_prompt: list[int] | None = None) -> None:
        """Start taking the engine's tokens (in a task of its own): the first engine request, or
        a continuation after :meth:`park` (``expect_prompt``: the token ids it was sent, which
        the engine's echo must match — the seam check of a token-id continuation)."""
        self._expect_prompt = expect_prompt
        self._upstream = upstream
        self.replica = upstream.server
        self._segment_start = self.progress.tokens
        self._parking = False
        self._reader = asyncio.create_task(self._read(upstream),
                                           name=f"andes-upstream-{self.id}")
        self._watchdog.watch(self)

    @property
    def is_parked(self) -> bool:
        return self._upstream is None and not self._upstream_done and self._reader is not None

    def end_parked(self, finish_reason: str) -> None:
        """A parked stream turned out complete (parked after its last token): end it there."""
        if self._upstream is None and not self._upstream_done:
            self.finish_reason = self.finish_reason or finish_reason
            self._upstream_done = True
            if not self.pacer.closed:
                self.pacer.close(self._loop.time())
            self._wake()

    def park(self) -> None:
        """Abort the engine request, keep the stream: the reader reads on from the buffer until
        :meth:`attach` resumes it."""
        upstream, self._upstream = self._upstream, None
        if upstream is None:
            return
        self._parking = True
        self.parks += 1
        upstream.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    def _take(self, event: Any, now: float) -> None:
        progress = self.progress
        if event.prompt_token_ids is not None:
            if progress.prompt_token_ids is None:
                progress.prompt_token_ids = list(event.prompt_token_ids)
            elif self._expect_prompt is not None:
                if list(event.prompt_token_ids) != self._expect_prompt:
                    self.seam_defects += 1
                self._expect_prompt = None
        if event.token_ids is not None:
            progress.token_ids.extend(event.token_ids)
            progress.tokens += len(event.token_ids)
            # Ids with no text: the engine holds text back (a split character, a stop string).
            self.seam_ok = event.text is not None or not event.token_ids
        elif event.text is not None:
            progress.tokens += 1
        if event.text is not None:
            progress.text += event.text
            self.pacer.feed((event.text,), now)
            self.arrivals.add(now, 1)
            if self.rich:
                self._meta.append(TokenMeta(event.choice, event.text, self._logprobs(event)))
        elif self.rich and event.logprobs is not None:
            carried = self._carried_logprobs
            carried[event.choice] = _merge_logprobs(carried.get(event.choice), event.logprobs)

    def _apply(self, event: Any, now: float) -> None:
        self._take(event, now)
        if event.extra:
            self._extras.append(Extra(self.pacer.fed, event.choice, event.extra))
        if event.finish_reason is not None:
            self.finish_reasons[event.choice] = event.finish_reason
            if event.choice == 0:
                self.finish_reason = event.finish_reason
        if event.usage is not None:
            self._last_usage = event.usage
            self.usage = event.usage

    async def _read(self, upstream: UpstreamStream) -> None:
        parked = False
        try:
            async for event in upstream.events():
                self._starving_since_s = None
                self._apply(event, self._loop.time())
                self._wake()
        except asyncio.CancelledError:
            parked = self._parking
            if not parked:
                raise
        except UpstreamError as exc:
            parked = self._parking
            if not parked:
                self._hooks.upstream_error("mid_stream")
                self._fail(exc)
        except PacerOverflow as exc:
            self._fail(SlowReader(f"the reader fell too far behind: {exc}"))
        except Exception as exc:  # a gateway bug: end the stream, keep the context in the log
            self._fail(GatewayError(f"internal error while reading the engine's stream: {exc!r}"))
            raise
        finally:
            if not parked:
                self._upstream_done = True
                if not self.pacer.closed:
                    self.pacer.close()
                if self.on_upstream_end is not None:
                    self.on_upstream_end(self)
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
        self._parking = False
        if self._upstream is not None:
            self._upstream.close()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        elif self._upstream is None and not self._upstream_done:
            # Parked (or never attached): nothing to abort upstream; the stream ends here.
            self._upstream_done = True
            if not self.pacer.closed:
                self.pacer.close()

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
        if isinstance(error, SlowReader) and self._writing_sink is not None:
            # The buffer overflowed while a write waits on the socket: nobody is reading.
            self._writing_sink.abort()
        self._wake()

    # -- the watchdog's checks (gateway/stream.py _Watchdog) -----------------------------------

    def _write_timed_out(self) -> None:
        self._fail(SlowReader(f"the client did not take the text within "
                              f"{self._slow_reader_timeout_s} s"))
        if self._writing_sink is not None:
            self._writing_sink.abort()

    def _check_engine(self, now_s: float) -> None:
        """End the stream if its reader has waited on a silent engine for ``stall_timeout_s``.

        Silence alone is no fault: the scheduler holds or parks streams whose readers have text
        buffered, and a paused reader needs nothing. The clock runs only while the reader has
        nothing left and is reading."""
        if (self._upstream_done or self.error is not None or self._end_reason is not None
                or self._upstream is None):  # parked: the gateway's scheduler resumes it
            self._starving_since_s = None
            return
        if self.pacer.paused or self.pacer.buffered(now_s) > 0:
            self._starving_since_s = None
            return
        if self._starving_since_s is None:
            self._starving_since_s = now_s
        elif now_s - self._starving_since_s >= self._stall_timeout_s:
            self._hooks.upstream_error("stall")
            self._fail(UpstreamTimeout(f"the engine sent nothing for {self._stall_timeout_s} s"))
            self._stop_upstream()

    # -- state ----------------------------------------------------------------------------------

    def buffered(self) -> int:
        return self.pacer.buffered(self._loop.time())

    def slack_s(self, now_s: float) -> float:
        """Seconds the reader can read from what is buffered (``inf`` while paused)."""
        pacer = self.pacer
        return _slack_s(pacer.buffered(now_s), pacer.tds_tok_s, pacer.paused)

    @property
    def pace_tok_s(self) -> float:
        return float(self.pacer.tds_tok_s)

    def final_usage(self) -> tuple[dict[str, int], dict[str, str]]:
        """The stream's usage over all its segments, and where each number came from; a missing
        ``prompt_tokens`` is for :mod:`gateway.usage` to fill in."""
        last = self._last_usage
        if last is not None and self.parks == 0 and "completion_tokens" in last:
            out = {"prompt_tokens": int(last.get("prompt_tokens", 0)),
                   "completion_tokens": int(last["completion_tokens"])}
            return out, {"prompt_tokens": "engine", "completion_tokens": "engine"}
        ids = self.progress.prompt_token_ids is not None
        usage: dict[str, int] = {}
        source: dict[str, str] = {}
        if last is not None and "completion_tokens" in last and self._upstream_done:
            # Aborted segments reported nothing: count them, take the engine's word for the last.
            usage["completion_tokens"] = self._segment_start + int(last["completion_tokens"])
            source["completion_tokens"] = "engine+" + ("ids" if ids else "counted")
        else:
            usage["completion_tokens"] = self.progress.tokens
            source["completion_tokens"] = "ids" if ids else "counted"
        if self.progress.prompt_token_ids is not None:
            usage["prompt_tokens"] = len(self.progress.prompt_token_ids)
            source["prompt_tokens"] = "ids"
        return usage, source

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
        """New input: serve it once the current step is over (a burst of tokens read at once is
        fed whole before anything is written, so it goes out as one write)."""
        waiter = self._waiter
        if waiter is None or waiter.done() or self._pump_soon:
            return
        if self._sink is not None and self.error is None and self._end_reason is None:
            self._pump_soon = True
            self._loop.call_soon(self._wake_now)
        else:
            waiter.set_result(None)

    def _wake_now(self) -> None:
        self._pump_soon = False
        waiter = self._waiter
        if waiter is not None and not waiter.done() and not self._pump():
            waiter.set_result(None)

    def _pump(self) -> bool:
        """Serve a sleeping writer's due time or new input here and now, if the sink can take a
        write at once; False if the writer itself must run (it is then woken)."""
        sink = self._sink
        if (sink is None or self.error is not None or self._end_reason is not None
                or self._extras or self.rich or self._drain_by_s is not None
                or not sink.ready_now()):
            return False  # non-text deltas, token metadata and a shutdown's hurry: the writer
        now = self._loop.time()
        if self._keepalive_due(sink, now):
            return False
        for chunk in self.pacer.due(now):
            sink.write_now(chunk)
            self._record(chunk, now)
        if self.pacer.done and self._upstream_done:
            return False  # the writer finishes the stream
        deadline = self._next_wake_s(sink)
        if deadline <= now:
            return False
        if math.isfinite(deadline) and (self._wake_at_s is None or self._wake_at_s > deadline):
            self._wake_at_s = deadline
            self._clock.wake_at(deadline, self)
        return True

    def _next_wake_s(self, sink: Sink) -> float:
        deadline = self.pacer.next_due_s()
        if deadline is None:
            deadline = math.inf
        if sink.keepalive_s is not None:
            deadline = min(deadline, self._last_write_s + sink.keepalive_s)
        if self._drain_by_s is not None and self.pacer.fed > self.pacer.sent:
            deadline = min(deadline, self._drain_by_s)
        return deadline

    def _keepalive_due(self, sink: Sink, now_s: float) -> bool:
        return (sink.keepalive_s is not None and self.error is None
                and now_s - self._last_write_s >= sink.keepalive_s)

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
            self._wake_now()

    async def run(self, sink: Sink) -> StreamResult:
        """Write the stream to ``sink`` until it ends; return how it ended. Always closes the
        engine request, also when cancelled (the client went away)."""
        self._last_write_s = self._loop.time()
        self._sink = sink
        reason = "finished"
        try:
            reason = await self._write_loop(sink)
        except (ConnectionError, asyncio.CancelledError) as exc:
            # An aborted slow reader's connection fails its write: that is the error's doing; a
            # reader who asked to stop and then closed the connection stopped; else it is gone.
            reason = ("error" if self.error is not None
                      else "cancelled" if self._end_reason == "cancelled" else "disconnected")
            self._stop_upstream()
            if isinstance(exc, asyncio.CancelledError):
                self.finish(reason)
                raise
        except SlowReader as exc:
            self._fail(exc)
            reason = "error"
        finally:
            self._sink = None
            self._stop_upstream()
        return self.finish(reason)

    async def _write_loop(self, sink: Sink) -> str:
        """Write due chunks, sleep until the next; return how the stream ended."""
        while True:
            if self.error is not None:
                return "error"
            if self._end_reason is not None:
                return self._end_reason
            now = self._loop.time()
            await self._write_due(sink, now)
            if self.pacer.done and self._upstream_done and not self._extras:
                return "error" if self.error is not None else "finished"
            deadline = self._next_wake_s(sink)
            if deadline > now:
                await self._sleep_until(deadline)
            if self._keepalive_due(sink, self._loop.time()):
                await self._guarded(sink.keepalive(), sink)
                self._last_write_s = self._loop.time()

    async def _write_due(self, sink: Sink, now: float) -> None:
        """Write what is due at ``now``: non-text deltas (after the text fed before them), then
        the paced text."""
        while self._extras:
            extra = self._extras[0]
            for chunk in self.pacer.release_until(extra.position, now):
                await self._write(sink, chunk, now)
            self._extras.popleft()
            write_extra = getattr(sink, "extra", None)
            if write_extra is not None:  # transports without non-text deltas drop them
                await self._guarded(write_extra(extra), sink)
                self._last_write_s = now
        if self._drain_by_s is not None:
            self._hurry(now)
        for chunk in self.pacer.due(now):
            await self._write(sink, chunk, now)

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
        # Every write is bounded, also one made with an empty backlog: one large chunk (pacing
        # off, a reader that never reads) fills the socket and then waits in drain(). The
        # watchdog times it (an entry in a dict, not a timer per write: a timer cost as much as
        # the write) and aborts the connection.
        writing = self._watchdog.writing
        writing[self] = self._loop.time()
        self._writing_sink = sink
        try:
            await write
        finally:
            self._writing_sink = None
            writing.pop(self, None)

    async def _write(self, sink: Sink, chunk: Chunk, now: float) -> None:
        await self._guarded(sink.delta(chunk), sink)
        if self.rich:  # a sink that renders text only (the WebSocket) leaves the metadata
            while len(self._meta) > self.pacer.fed - self.pacer.sent:
                self._meta.popleft()
        self._record(chunk, now)

    def _record(self, chunk: Chunk, now: float) -> None:
        """A chunk was written at ``now``: lateness, first token, QoE at delivery."""
        if self.mode == "server":
            self._hooks.lateness(max(now - chunk.due_s, 0.0))
        if self.first_token_s is None:
            self.first_token_s = now
        elif self._last_text_s is not None and chunk.count:
            self._hooks.inter_token((now - self._last_text_s) / chunk.count)
        self._last_text_s = now
        self._sent_qoe.add(now, chunk.count)
        self._last_write_s = now

    def finish(self, reason: str) -> StreamResult:
        """How the stream ended (also for a transport that failed before :meth:`run`)."""
        if self.result is not None:
            return self.result
        self._watchdog.unwatch(self)
        tracker = self._sent_qoe
        if self.mode == "client" and self._acked > 0:
            tracker = self._acked_qoe
            unacked = self.pacer.sent - self._acked
            if unacked > 0:
                tracker.add(self._loop.time(), unacked)
                self._acked = self.pacer.sent
        ttft = None if self.first_token_s is None else self.first_token_s - self.arrival_s
        usage, source = self.final_usage()
        self.result = StreamResult(reason=reason, finish_reason=self.finish_reason,
                                   usage=usage, qoe=tracker.qoe(), ttft_s=ttft,
                                   tokens=self.pacer.sent, error=self.error,
                                   usage_source=source, parks=self.parks,
                                   queued_s=self.queued_s)
        if self.on_end is not None:
            self.on_end(self)
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
        self._firing = False  # inside _fire: wake_at only pushes

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Clock:
        clock = cls._clocks.get(loop)
        if clock is None:
            clock = cls._clocks[loop] = cls(loop)
        return clock

    def wake_at(self, deadline_s: float, stream: Stream) -> None:
        heapq.heappush(self._heap, (deadline_s, next(self._seq), stream))
        if self._firing:
            return  # _fire arms the one timer when it is done
        if deadline_s < self._timer_at_s:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at_s = deadline_s
            self._timer = self._loop.call_at(deadline_s, self._fire)

    def _fire(self) -> None:
        # Streams served here re-arm from inside the loop below (Stream._pump): they only push
        # onto the heap, and one timer is armed at the end. (Arming one each, unseen by the
        # next line, left timers that each kept a chain of _fire calls alive.)
        self._timer, self._timer_at_s = None, math.inf
        self._firing = True
        try:
            now = self._loop.time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                deadline_s, _, stream = heapq.heappop(heap)
                stream._on_clock(deadline_s)
        finally:
            self._firing = False
        if heap:
            self._timer_at_s = heap[0][0]
            self._timer = self._loop.call_at(self._timer_at_s, self._fire)


class _Watchdog:
    """What bounds every stream's waits, for all the streams of an event loop, on one periodic
    timer: a write blocked longer than its stream's slow-reader timeout
    (:meth:`Stream._write_timed_out`) and a reader waiting longer than the stall timeout on an
    engine that says nothing (:meth:`Stream._check_engine`).

    A write costs two dict operations here; a tick costs one check per live stream, a few times a
    second at most (``period_s``: a quarter of the smallest timeout, within [0.05, 1] s, so a
    timeout fires at most that much late)."""

    _dogs: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog]] = \
        weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.streams: dict[Stream, None] = {}  # live streams (a dict: ordered, O(1) removal)
        self.writing: dict[Stream, float] = {}  # stream -> when its write in progress began
        self.period_s = 1.0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Watchdog:
        dog = cls._dogs.get(loop)
        if dog is None:
            dog = cls._dogs[loop] = cls(loop)
        return dog

    def watch(self, stream: Stream) -> None:
        self.streams[stream] = None
        shortest = min(stream._slow_reader_timeout_s, stream._stall_timeout_s)
        self.period_s = min(self.period_s, max(shortest / 4, 0.05))
        if self._timer is None:
            self._timer = self._loop.call_later(self.period_s, self._tick)

    def unwatch(self, stream: Stream) -> None:
        self.streams.pop(stream, None)
        self.writing.pop(stream, None)

    def _tick(self) -> None:
        self._timer = None
        now = self._loop.time()
        for stream, since in list(self.writing.items()):
            if now - since >= stream._slow_reader_timeout_s:
                stream._write_timed_out()
        for stream in list(self.streams):
            stream._check_engine(now)
        if self.streams or self.writing:
            self._timer = self._loop.call_later(self.period_s, self._tick)


@dataclass(slots=True)
class StreamTable:
    """The live streams of one gateway: the concurrency limit and the shutdown switch."""

    max_streams: int
    streams: dict[str, Stream] = field(default_factory=dict)
    reserved: int = 0  # admitted, not yet registered (waiting for the engine to answer)
    draining: bool = False
    drain_deadline_s: float | None = None  # shutdown: text written by then (loop clock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # With several worker processes (gateway/workers.py) the limit is the gateway's: the
    # streams the other workers hold, and where this one publishes its own count.
    others: Callable[[], int] = lambda: 0
    publish: Callable[[int], None] = lambda n: None

    def admit(self) -> None:
        """Reserve a slot or raise :class:`RateLimited` / :class:`ShuttingDown`."""
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another instance")
        if len(self.streams) + self.reserved + self.others() >= self.max_streams:
            raise RateLimited(f"too many concurrent streams (limit {self.max_streams}); "
                              "retry later")
        self.reserved += 1
        self.publish(len(self))
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
        self.publish(len(self))
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
