"""The scheduler's hands: queueing, parking, resuming and health, over real upstreams.

:class:`Dispatcher` wraps the sans-I/O :class:`~gateway.admission.Scheduler`:

* :meth:`acquire` is where a new stream waits for its turn (the gateway's queue). A client that
  goes away while queued cancels the wait and leaves nothing upstream; a full queue or a wait
  past ``queue_timeout_s`` is a 429.
* a tick loop runs while anything is queued or parked (and only then: an unloaded gateway does
  no scheduling work), every ``sched_interval_s``: it carries out each :class:`Plan` — admits
  (wakes the waiting request), parks (aborts the engine request of a stream whose reader has
  seconds buffered) and resumes (opens the continuation request and attaches it).
* a health loop checks every upstream every ``health_interval_s``; one that fails
  ``HEALTH_FAILURES`` times in a row is taken out: its live streams end with a clear error at
  once (an engine that hangs breaks no connection; they would hang with it), its parked streams
  may resume on another replica. It comes back, re-probed, when a check passes.
* the start-up probe (:mod:`gateway.probe`) decides per upstream whether parking is exact.

An upstream that runs the Andes scheduler (it advertises or is configured a slack endpoint) is
left to schedule itself: streams go to it at once and are never parked there — the engine knows
its KV cache and batch, and gets every stream's slack.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

from gateway.admission import Plan, Scheduler, SchedulerConfig, Ticket, UpstreamView
from gateway.config import GatewayConfig
from gateway.continuation import continuation_body, not_parkable, remaining_tokens
from gateway.errors import GatewayError, RateLimited, UpstreamError, UpstreamUnavailable
from gateway.probe import probe
from gateway.replica import Replica
from gateway.stream import Stream
from gateway.upstream import Endpoint, Upstream
from slack.discovery import discover

__all__ = ["DispatchHooks", "Dispatcher"]

log = logging.getLogger("andes.gateway")



# The continuations each --parking setting parks by (docs/continuation.md: a text continuation
# re-tokenizes and re-prefills at the seam, so it is opt-in).
_PARKED_KINDS: dict[str, tuple[str, ...]] = {"auto": ("token_ids",), "text": ("token_ids", "text")}


class DispatchHooks:
    """Metric callbacks (the metrics module provides them; defaults do nothing)."""

    def queued(self, wait_s: float, outcome: str) -> None:
        """A request left the queue: ``admitted``, ``direct`` (never waited), ``full``,
        ``expired``."""

    def parked(self) -> None:
        """A stream was parked."""

    def resumed(self) -> None:
        """A parked stream's continuation was opened."""

    def resume_cost(self, ttft_s: float) -> None:
        """A continuation's first token came ``ttft_s`` after it was sent."""

    def seam_refused(self) -> None:
        """A park was called off: the seam was not exact at that point."""

    def admitted(self, rule: str | None) -> None:
        """A stream was sent upstream (a first request or a resume) by ``rule``
        (:data:`gateway.admission.AdmitRule`)."""


class Dispatcher:
    """Admission, parking, routing and health for one gateway (see the module docstring)."""

    def __init__(self, config: GatewayConfig, upstream: Upstream,
                 hooks: DispatchHooks | None = None) -> None:  # fmt: skip
        self.config = config
        self.upstream = upstream
        self.hooks = hooks or DispatchHooks()
        self.views = [UpstreamView(capacity=r.capacity, serves=r.serves)
                      for r in upstream.replicas]  # fmt: skip
        self.scheduler = Scheduler(SchedulerConfig(
            horizon_s=config.sched_horizon_s, queue_max=config.queue_max,
            queue_timeout_s=config.queue_timeout_s, starvation_s=config.queue_starvation_s,
            parking=config.parking != "off",
            park_min_slack_s=config.park_min_slack_s, min_run_s=config.park_min_run_s,
            park_budget_share=config.park_budget,
            max_in_flight=config.max_upstream_streams, routing=config.routing,
        ), self.views)  # fmt: skip
        self._waiting: dict[Ticket, asyncio.Future[int]] = {}
        self._tickets: dict[str, Ticket] = {}
        self._requests: dict[str, tuple[Endpoint, dict[str, Any]]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._resuming: set[asyncio.Task[None]] = set()
        self.probed = asyncio.Event()  # set once every upstream has been probed

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        for replica in self.upstream.replicas:
            self._controlled(replica)
        self._tasks = [asyncio.create_task(self._tick_loop(), name="andes-scheduler"),
                       asyncio.create_task(self._health_loop(), name="andes-health"),
                       asyncio.create_task(self._probe_all(), name="andes-probe")]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._resuming]:
            task.cancel()
        for task in [*self._tasks, *self._resuming]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(UpstreamUnavailable("the gateway is shutting down"))

    async def _probe_all(self) -> None:
        try:
            if self.config.parking != "off":
                await asyncio.gather(*(self._probe(r) for r in self.upstream.replicas))
        finally:
            self.probed.set()

    async def _probe(self, replica: Replica) -> None:
        try:
            await self.upstream.refresh(replica)
        except UpstreamError as exc:
            self._controlled(replica)
            replica.probe_note = f"not probed: {exc.message}"
            return
        self._controlled(replica)
        if replica.controlled:
            replica.probe_note = "not probed: the engine runs the Andes scheduler (it schedules)"
            return
        if not replica.models:
            replica.probe_note = "not probed: no model served"
            return
        await probe(self.upstream.session, replica, replica.models[0]["id"])

    # -- admission ------------------------------------------------------------------------------

    def _sync(self) -> None:
        for view, replica in zip(self.views, self.upstream.replicas, strict=True):
            view.controlled = replica.controlled
            # Admitted tickets count before their request is open (no over-admission meanwhile).
            view.in_flight = max(replica.active, len(view.running))
            view.healthy = replica.healthy

    async def acquire(self, stream: Stream, endpoint: Endpoint, body: dict[str, Any]) -> Replica:
        """Wait for ``stream``'s turn; the replica to send it to. Raises :class:`RateLimited`
        (queue full, or waited too long) or :class:`UpstreamUnavailable` (none is up)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        ticket = Ticket(id=stream.id, spec=stream.spec, tracker=stream.arrivals, reader=stream,
                        model=str(body.get("model")), queued_at_s=now,
                        # what it asked for (the queue's order); the upstream's limit once placed
                        max_new_tokens=remaining_tokens(endpoint, body, stream.progress) or None)
        self._tickets[stream.id] = ticket
        self._requests[stream.id] = (endpoint, body)
        stream.on_end = self._ended
        stream.on_upstream_end = self._upstream_ended
        self._sync()
        if not self.config.admission:
            index = self.scheduler.route(ticket, now)
            if index is None:
                raise UpstreamUnavailable("no upstream serves this model")
            self.scheduler.start(ticket, index, now)
            ticket.admitted_by = "route"
            self.hooks.admitted(ticket.admitted_by)
            return self._place(stream, ticket, index, endpoint, body)
        try:
            index = self.scheduler.add(ticket, now)
        except OverflowError as exc:
            self._forget(stream.id)
            self.hooks.queued(0.0, "full")
            raise RateLimited(f"{exc}; retry later", code="queue_full") from None
        if index is None:
            fut: asyncio.Future[int] = loop.create_future()
            self._waiting[ticket] = fut
            self._wake.set()
            try:
                index = await fut
            except BaseException:
                # Cancelled (the client left) or expired: nothing was sent upstream.
                self.scheduler.remove(ticket)
                self._forget(stream.id)
                raise
            finally:
                self._waiting.pop(ticket, None)
            stream.queued_s = loop.time() - now
            self.hooks.queued(stream.queued_s, "admitted")
        else:
            self.hooks.queued(0.0, "direct")
            log.debug("stream %s sent at once (%s); in flight there: %d", stream.id,
                      ticket.admitted_by, self.views[index].in_flight)
        self.hooks.admitted(ticket.admitted_by)
        return self._place(stream, ticket, index, endpoint, body)

    def _place(self, stream: Stream, ticket: Ticket, index: int, endpoint: Endpoint,
               body: dict[str, Any]) -> Replica:  # fmt: skip
        replica = self.upstream.replicas[index]
        max_len = replica.max_model_len(ticket.model)
        ticket.max_new_tokens = remaining_tokens(endpoint, body, stream.progress, max_len) or None
        kinds = _PARKED_KINDS.get(self.config.parking, ())
        ticket.parkable = (self.config.admission and replica.continuation in kinds
                           and stream.mode == "server"
                           and not_parkable(endpoint, body, replica.continuation, max_len) is None)
        return replica

    def failed_to_open(self, stream: Stream) -> None:
        """The first engine request could not be opened: forget the ticket."""
        ticket = self._tickets.get(stream.id)
        if ticket is not None:
            self.scheduler.remove(ticket)
        self._forget(stream.id)

    def _ended(self, stream: Stream) -> None:
        ticket = self._tickets.get(stream.id)
        if ticket is not None:
            self.scheduler.remove(ticket)
            self._forget(stream.id)
            self._wake.set()

    def _upstream_ended(self, stream: Stream) -> None:
        """The engine request ended: its slot is free for the queue, whatever the reader still
        has to read (a paced stream outlives its engine request by its buffer)."""
        ticket = self._tickets.get(stream.id)
        if ticket is not None and ticket.state == "running":
            self.scheduler.release(ticket)
            self._wake.set()

    def _forget(self, stream_id: str) -> None:
        self._tickets.pop(stream_id, None)
        self._requests.pop(stream_id, None)

    # -- the tick loop --------------------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self.scheduler.queue or self.scheduler.parked)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._busy():
                self._wake.clear()
                await self._wake.wait()
            self._sync()
            try:
                self._carry_out(self.scheduler.plan(loop.time()), loop.time())
            except Exception:  # a bug here must not stop scheduling for everyone
                log.exception("scheduler tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.sched_interval_s)

    def _carry_out(self, plan: Plan, now: float) -> None:
        if plan and log.isEnabledFor(logging.DEBUG):
            self._log_plan(plan)
        for ticket in plan.expired:
            fut = self._waiting.get(ticket)
            if fut is not None and not fut.done():
                self.hooks.queued(now - ticket.queued_at_s, "expired")
                fut.set_exception(RateLimited(
                    f"waited {self.config.queue_timeout_s:g} s in the gateway's queue without "
                    "an upstream able to serve it; retry later", code="queue_timeout"))
        for ticket, index in plan.admit:
            fut = self._waiting.get(ticket)
            if fut is not None and not fut.done():
                fut.set_result(index)
            else:  # its client left in the meantime
                self.scheduler.remove(ticket)
        for ticket in plan.park:
            self._park(ticket, now)
        for ticket, index in plan.resume:
            self.hooks.admitted(ticket.admitted_by)
            self._spawn(self._resume(ticket, index), f"andes-resume-{ticket.id}")

    def _log_plan(self, plan: Plan) -> None:
        """One debug line per plan that did something: what, by which rule, and each upstream's
        state as admission saw it (in flight, where its token rate was seen to flatten, the
        most it may test)."""
        rules = collections.Counter(t.admitted_by for t, _ in plan.admit + plan.resume)
        share = self.scheduler.config.min_throughput_share
        ups = "; ".join(
            f"{r.base}: in_flight={v.in_flight} plateau={v.capacity.plateau(share)}"
            f" frontier={v.capacity.frontier()}"
            for v, r in zip(self.views, self.upstream.replicas, strict=True))
        log.debug("plan: admitted=%d resumed=%d parked=%d expired=%d by=%s queue=%d | %s",
                  len(plan.admit), len(plan.resume), len(plan.park), len(plan.expired),
                  dict(rules), len(self.scheduler.queue), ups)

    def _stream(self, ticket: Ticket) -> Stream:
        stream = ticket.reader
        assert isinstance(stream, Stream)
        return stream

    def _park(self, ticket: Ticket, now: float) -> None:
        stream = self._stream(ticket)
        replica = stream.replica
        # A stream whose engine already sent its finish (the rest of its response in flight)
        # has nothing left to continue: a continuation would generate past its end.
        ok = (stream.seam_ok and stream.finish_reason is None and replica is not None
              and replica.continuation is not None)
        if ok and replica.continuation == "token_ids":
            ok = stream.progress.prompt_token_ids is not None
        if not ok:
            self.hooks.seam_refused()
            self.scheduler.unpark(ticket, now)
            return
        stream.park()
        self.hooks.parked()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)

    async def _resume(self, ticket: Ticket, index: int) -> None:
        """Open ``ticket``'s continuation on upstream ``index`` (the plan already counts it as
        running there). Whatever happens, the stream either runs again or ends: a parked stream
        nobody resumes would leave its reader waiting for ever, and its ticket holding a slot."""
        stream = self._stream(ticket)
        try:
            if not await self._open_continuation(ticket, stream, index):
                self._release(ticket)
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            self._release(ticket)
            stream.abort(exc)
        except Exception as exc:  # a gateway bug: end this stream, keep the others going
            log.exception("resuming stream %s failed", stream.id)
            self._release(ticket)
            stream.abort(GatewayError(f"internal error while resuming the stream: {exc!r}"))

    def _release(self, ticket: Ticket) -> None:
        self.scheduler.release(ticket)
        self._wake.set()

    async def _open_continuation(self, ticket: Ticket, stream: Stream, index: int) -> bool:
        """Resume ``stream``: True when it runs again, False when it ended instead."""
        request = self._requests.get(stream.id)
        if request is None or stream.result is not None:  # it ended meanwhile
            return False
        if stream.finish_reason is not None:  # its finish came before the park took effect
            stream.end_parked(stream.finish_reason)
            return False
        endpoint, body = request
        replica = self.upstream.replicas[index]
        kind = replica.continuation
        if kind is None:
            raise UpstreamUnavailable("the upstream lost its exact continuation")
        cont = continuation_body(endpoint, body, stream.progress, kind,
                                 replica.max_model_len(ticket.model))
        if cont["max_tokens"] <= 0:  # parked after its last token, before the finish
            stream.end_parked("length")
            return False
        up = await self.upstream.open("completions", cont, stream_id=stream.id,
                                      qoe=stream.spec, server=replica, resumed=True)
        up.on_first_token = self.hooks.resume_cost
        if stream.result is not None:  # it ended while the continuation was being opened
            up.close()
            return False
        stream.attach(up, cont["prompt"] if kind == "token_ids" else None)
        self.hooks.resumed()
        return True

    # -- health ---------------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await asyncio.gather(*(self._check(r) for r in self.upstream.replicas))

    def _controlled(self, replica: Replica) -> None:
        """Whether the engine runs the Andes scheduler: its responses say so (``andes engine``'s
        header, seen on the latest ``GET /v1/models``), or it takes slack reports (configured
        endpoints, or its advert on this host)."""
        cfg = self.config
        replica.controlled = (replica.schedules_itself or bool(cfg.slack_urls)
                              or (cfg.slack_discovery and bool(discover(replica.base))))

    async def _check(self, replica: Replica) -> None:
        timeout_s = max(2.0, self.config.health_interval_s * 2)
        try:
            await self.upstream.refresh(replica, timeout_s)
        except UpstreamError:
            self._controlled(replica)
            if replica.busy_not_dead(time.monotonic()):
                return
            if replica.failed():
                self._out(replica)
            return
        self._controlled(replica)
        if replica.ok():
            log.warning("upstream %s is back in service", replica.base)
            if self.config.parking != "off":
                self._spawn(self._probe(replica), f"andes-reprobe-{replica.index}")
            self._wake.set()

    def _out(self, replica: Replica) -> None:
        log.warning("upstream %s failed its health checks: taken out of service", replica.base)
        for up in list(replica.streams):
            up.fail(f"upstream {replica.base} failed its health checks and was taken out of "
                    "service")
        self.scheduler.unpark_elsewhere(replica.index)
        self._wake.set()

