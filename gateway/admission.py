"""Who runs on which upstream: the gateway's own QoE scheduler for engines it does not control.
Sans-I/O: every method takes ``now_s``; the adapter (:mod:`gateway.dispatch`) does the I/O.

Each stream is a :class:`Ticket` in one of three states: ``queued`` (never sent upstream),
``running`` (a request open on an upstream) or ``parked`` (its upstream request aborted, its
reader living off the buffer, resumable by a continuation — :mod:`gateway.continuation`).

**Admission.** A new request goes straight upstream when it pushes nobody below their reader's
pace — on some upstream ``L(k+1)`` (the learned per-stream token latency with one more in flight,
:mod:`gateway.capacity`) is at most ``1/pace`` of every stream there — or when that upstream's
token rate is not yet saturated (:meth:`CapacityModel.saturated`: more in flight would still
raise its throughput by more than ``1 − min_throughput_share``). The second rule is the engine
policy's throughput floor at the gateway's granularity: holding a stream is worth it only where
the engine would not have served more tokens with it — on a batching engine, once its own batch
or KV limit binds and the rest would wait in its queue anyway, which then becomes the gateway's
QoE-ordered queue instead of the engine's FCFS one. Over both, the gateway never sends a
request into an engine's *own* queue, where it would add no throughput and the engine's order
would decide: not while a request open there has had no first token for longer than an idle
upstream takes plus its reader's TTFT allowance (live: the engine's slot, batch or KV cache is
full), and not at a concurrency where a newcomer was measured to wait behind the others by more
than that allowance (:meth:`CapacityModel.queueing_s`) — a one-slot server (llama-cpp-python)
takes requests in turn, and though its *average* per-stream latency says two streams share it,
the second gets nothing until the first ends; such an engine is time-sliced by swaps, not
queued into. And no rule sends a stream more than a step (a quarter) above the highest
concurrency whose token rate was measured until that step is measured
(:meth:`CapacityModel.frontier`): a plan never sends a queue's worth of untested requests.
Above the plateau (where the rate is saturated) streams go one at a time, each once the one
before it had its first token (:meth:`Scheduler._starting`): the rate cannot see a KV cache
that holds fewer long streams than short ones, and each newcomer there tests that the engine
serves it at once. The rule that sent each stream is counted (``andes_gateway_admissions``).
This fast path costs no prediction, so an unloaded gateway adds nothing.

**Planning** (:meth:`Scheduler.plan`, every tick while anything waits). The paper's valuation
(§4.2) at the gateway's granularity: a stream's value on upstream ``u`` is
``predict_serve_gain`` — the QoE it gains by being served at ``u``'s per-token latency rather
than waiting — over a window of ``horizon_s`` *after its first token*, which comes after ``u``'s
learned TTFT (resume TTFT for a parked stream): at the engine a first token takes one step, at
the gateway it can take seconds (a prompt's prefill on a one-slot CPU server), and a window
that ended before it would value every waiting stream at nothing. The reader is where the
gateway measures it (slack, pace). Each candidate is placed where it does the most good, in
this order (:meth:`Scheduler._ordered`):

1. parked streams whose readers will run dry within the window (value > 0), most valuable
   first: a stream already started is finished before new ones start;
2. queued streams **by the QoE a second of waiting costs them per token of service**. Unlike
   the engine's step, admission commits an upstream to a whole stream: what matters is the
   stream's *final* QoE and how long it will hold its place. A response of ``l`` tokens served
   after its reader's TTFT allowance plus ``d`` seconds, at least at its reader's pace ``p``,
   scores ``q(d) = 1 / (1 + 2·d·p / l)`` (DESIGN.md's check; within 0.01 of the exact QoE when
   the engine outpaces the reader), so a second more costs it ``-q'(d) = (2p/l) / (1 +
   2dp/l)²``, and serving it holds a place on the upstream for about ``l`` tokens. Smith's rule
   (order by loss rate over service time, which minimises the summed loss) gives the key
   ``2p / (l + 2dp)²``: the stream's length plus twice what its reader would have read while
   it was late, smallest first, faster readers first. Short answers go before long ones (a
   second costs them more and their place is back soon), and a stream that has waited goes
   after fresher ones of its size (its QoE falls ever slower: the valuation serves the
   requests it can still make whole and leaves the late ones to ``queue_timeout_s``; measured,
   that gives readers on average far more than first come, first served, which serves every
   one late). ``l`` is what the request may still produce (its ``max_tokens``); where it says
   nothing, the mean length of the streams this gateway has served (the order then falls back
   to lateness and pace);
3. parked streams with seconds to spare.

An operator who prefers fewer timeouts sets ``starvation_s``: a ticket queued that long goes
first, oldest first.

* **add** — onto an upstream where admission would let it in (above: an idle one, one whose
  token rate still grows, or one where everyone keeps pace with it), the lowest TTFT first;
  else onto a saturated one where its value over ``horizon_s`` (from now: the engine's TTFT at
  that load included) exceeds what the ``k`` streams running there lose when their latency goes
  from ``L(k)`` to ``L(k+1)``. An engine that shares its throughput among more streams serves a
  newcomer within the horizon, at the cost of streams whose readers have text buffered; one that
  queues it behind the others (a one-slot server, a batch at its limit) does not, and there it
  waits in the gateway's queue, where a swap can serve it sooner;
* **swap** — park the running stream with the most slack there (only where the continuation is
  exact, after ``min_run_s`` of running, with at least ``park_min_slack_s`` buffered for its
  reader, and only once the upstream's earlier parks are paid back: a resume re-prefills what
  the engine had computed, and at most ``park_budget_share`` of its time may go to that — the
  throughput floor again) and run the candidate in its place, where the candidate's value
  exceeds what the parked stream loses over the same window. On a one-slot engine this is time
  slicing; on a batching one it frees KV cache and a batch slot.

Queued tickets past ``queue_timeout_s`` are returned as expired; the queue holds at most
``queue_max`` (:meth:`Scheduler.add` refuses beyond).

**Routing** falls out of the same rules: among the upstreams that admit, the lowest learned TTFT
at its load; among swaps, the best value (what the parked stream's slack can absorb).
``least_busy`` routing (fewest in flight) is kept for comparison and for when admission is off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from core.qoe import QoESpec, QoETracker, predict_serve_gain
from gateway.capacity import CapacityModel

__all__ = [
    "AdmitRule", "Plan", "Scheduler", "SchedulerConfig", "Ticket", "TicketState", "UpstreamView",
]

TicketState = Literal["queued", "running", "parked", "done"]
# Why a stream was sent upstream: ``idle`` (nothing in flight there), ``controlled`` (the engine
# schedules itself), ``rate_grows`` (its token rate is not saturated), ``keeps_pace`` (everyone
# keeps their reader's pace with one more), ``value`` (added onto a saturated upstream for its
# value), ``swap`` (in place of a parked stream), ``route`` (admission off).
AdmitRule = Literal["idle", "controlled", "rate_grows", "keeps_pace", "value", "swap", "route"]
_EPS = 1e-6
_DEFAULT_TOKENS = 256.0  # a stream's length before any was served (the queue's order only)


class Reader(Protocol):
    """What the scheduler reads of a stream's reader (the gateway's :class:`Stream`)."""

    def slack_s(self, now_s: float) -> float:
        """Seconds the reader can go on from what is buffered for it (``inf`` if paused)."""

    @property
    def pace_tok_s(self) -> float:
        """The reader's pace now, tokens per second."""


@dataclass(eq=False)
class Ticket:
    """One stream as the scheduler sees it."""

    id: str
    spec: QoESpec
    tracker: QoETracker  # tokens as they reached the gateway (the reader's QoE so far, predicted)
    reader: Reader
    model: str
    queued_at_s: float
    max_new_tokens: int | None = None  # tokens it may still produce; None = unknown
    state: TicketState = "queued"
    upstream: int | None = None  # index of the upstream it runs or is parked on
    run_since_s: float = 0.0  # when its current run started (anti-thrash)
    parkable: bool = False  # an exact continuation exists for it on its upstream
    admitted_pace: float = 0.0  # its reader's pace when it joined its upstream's running set
    admitted_by: AdmitRule | None = None  # the rule that started its current run (metrics)

    def left(self) -> int | None:
        if self.max_new_tokens is None:
            return None
        return max(self.max_new_tokens - self.tracker.num_tokens, 0)


@dataclass(eq=False)
class UpstreamView:
    """One upstream as the scheduler sees it."""

    capacity: CapacityModel
    serves: Callable[[str], bool] = lambda model: True
    healthy: bool = True
    # The engine runs the Andes scheduler (it takes slack reports): it schedules with what it
    # knows (KV, batch), so the gateway neither holds streams for it nor parks them there.
    controlled: bool = False
    in_flight: int = 0  # requests open on it (running tickets and anything else)
    running: list[Ticket] = field(default_factory=list)
    # Running tickets by their reader's pace when admitted: the fast path's max pace in O(paces)
    # rather than O(streams) (a gateway holds thousands).
    paces: dict[float, int] = field(default_factory=dict)
    # Engine-seconds of resumes not yet paid back (SchedulerConfig.park_budget_share), as of
    # ``debt_at_s``: a leaky bucket that drains at the budget's share of each second.
    park_debt_s: float = 0.0
    debt_at_s: float = 0.0

    def add(self, ticket: Ticket) -> None:
        self.running.append(ticket)
        pace = ticket.reader.pace_tok_s
        ticket.admitted_pace = pace
        self.paces[pace] = self.paces.get(pace, 0) + 1

    def discard(self, ticket: Ticket) -> None:
        if ticket in self.running:
            self.running.remove(ticket)
            pace = ticket.admitted_pace
            left = self.paces.get(pace, 0) - 1
            if left > 0:
                self.paces[pace] = left
            else:
                self.paces.pop(pace, None)

    def max_pace(self) -> float:
        return max(self.paces, default=0.0)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    horizon_s: float = 3.0  # the valuation's look-ahead Δt
    queue_max: int = 1024  # queued tickets at most
    queue_timeout_s: float = 60.0  # a ticket queued longer is expired
    parking: bool = True  # swaps may park running streams
    park_min_slack_s: float = 6.0  # park only a stream whose reader has this much buffered
    min_run_s: float = 1.0  # a (re)started stream runs at least this long before it is parked
    max_in_flight: int = 0  # hard limit per upstream; 0 = only what is learned
    routing: Literal["qoe", "least_busy"] = "qoe"
    max_rejects: int = 16  # a plan stops after this many candidates in a row found no place
    # A ticket queued this long goes before any valued one (oldest first); 0: never. The
    # valuation favours requests it can still make whole, so on its own it leaves an already-late
    # one waiting until ``queue_timeout_s`` — which bounds every wait. A floor below the timeout
    # trades that for fewer timeouts: under sustained overload it makes the queue first come,
    # first served, and every stream is served late (measured: BENCHMARKS.md, gateway-sched).
    starvation_s: float = 0.0
    # Hold a stream only where the upstream already gives this share of the best token rate
    # measured on it (the engine policy's ``min_throughput_share``): QoE is not bought with
    # throughput.
    min_throughput_share: float = 0.98
    # The share of an upstream's time its resumes may take: a park costs the engine a re-prefill
    # of what it had computed (its measured resume TTFT), so parking is bounded by the same
    # floor — at most one park per ``cost / park_budget_share`` seconds per upstream. 1: no
    # limit. Where a resume is cheap (a prefix cache, a fast prefill) this allows many.
    park_budget_share: float = 0.02


@dataclass(slots=True)
class Plan:
    """What to do now. Every ticket in it has already been moved to its new state."""

    admit: list[tuple[Ticket, int]] = field(default_factory=list)  # queued → running on upstream
    resume: list[tuple[Ticket, int]] = field(default_factory=list)  # parked → running
    park: list[Ticket] = field(default_factory=list)  # running → parked
    expired: list[Ticket] = field(default_factory=list)  # queued too long: refuse with 429

    def __bool__(self) -> bool:
        return bool(self.admit or self.resume or self.park or self.expired)


class Scheduler:
    """The gateway's tickets across its upstreams. See the module docstring."""

    def __init__(self, config: SchedulerConfig, upstreams: Sequence[UpstreamView]) -> None:
        self.config = config
        self.upstreams = list(upstreams)
        self.queue: list[Ticket] = []
        self.parked: list[Ticket] = []
        # Tokens per stream served here (a running mean): the length of a request that does not
        # say (no max_tokens), for the queue's order.
        self.mean_tokens = _DEFAULT_TOKENS
        self._served = 0

    # -- bookkeeping ------------------------------------------------------------------------------

    def add(self, ticket: Ticket, now_s: float) -> int | None:
        """A new request: the upstream to send it to now, or None (queued). Raises
        :class:`OverflowError` when the queue is full."""
        if not self.queue:
            fast = self._fast_path(ticket, now_s)
            if fast is not None:
                u, ticket.admitted_by = fast
                self.start(ticket, u, now_s)
                return u
        if len(self.queue) >= self.config.queue_max:
            raise OverflowError(f"the gateway's queue is full ({self.config.queue_max} waiting)")
        ticket.state = "queued"
        self.queue.append(ticket)
        return None

    def remove(self, ticket: Ticket) -> None:
        """The stream ended (finished, failed, cancelled, or left the queue)."""
        if ticket.state == "queued" and ticket in self.queue:
            self.queue.remove(ticket)
        elif ticket.state == "parked" and ticket in self.parked:
            self.parked.remove(ticket)
        elif ticket.state == "running" and ticket.upstream is not None:
            self.upstreams[ticket.upstream].discard(ticket)
            self._served_one(ticket)
        ticket.state = "done"

    def release(self, ticket: Ticket) -> None:
        """A running ticket's engine request ended: it holds no upstream slot any more, though
        its reader reads on (it is neither queued nor parkable from now)."""
        if ticket.state == "running" and ticket.upstream is not None:
            self.upstreams[ticket.upstream].discard(ticket)
            self._served_one(ticket)
            ticket.state = "done"

    def _served_one(self, ticket: Ticket) -> None:
        n = ticket.tracker.num_tokens
        if n > 0:
            self._served += 1
            self.mean_tokens += (n - self.mean_tokens) / self._served

    def unpark(self, ticket: Ticket, now_s: float) -> None:
        """A park the plan asked for was not carried out: the ticket runs on."""
        if ticket.state == "parked" and ticket in self.parked and ticket.upstream is not None:
            self.parked.remove(ticket)
            ticket.state = "running"
            self.upstreams[ticket.upstream].add(ticket)

    def park_now(self, ticket: Ticket, now_s: float) -> None:
        """Park a running ticket outside a plan (a park whose seam check finished later)."""
        if ticket.state == "running" and ticket.upstream is not None:
            self._park(ticket)

    def unpark_elsewhere(self, index: int) -> None:
        """Upstream ``index`` is down: its parked tickets may resume on any upstream."""
        for t in self.parked:
            if t.upstream == index:
                t.upstream = None

    def start(self, ticket: Ticket, u: int, now_s: float) -> None:
        """Run ``ticket`` on upstream ``u`` from now (routing without admission, and plans)."""
        ticket.state = "running"
        ticket.upstream = u
        ticket.run_since_s = now_s
        self.upstreams[u].add(ticket)

    def _park(self, ticket: Ticket) -> None:
        assert ticket.upstream is not None
        self.upstreams[ticket.upstream].discard(ticket)
        ticket.state = "parked"
        self.parked.append(ticket)

    # -- the fast path and least-busy routing ---------------------------------------------------

    def _eligible(self, ticket: Ticket) -> list[int]:
        limit = self.config.max_in_flight
        return [i for i, u in enumerate(self.upstreams)
                if u.healthy and u.serves(ticket.model)
                and (limit <= 0 or u.in_flight < limit)]  # fmt: skip

    def _fast_path(self, ticket: Ticket, now_s: float) -> tuple[int, AdmitRule] | None:
        """An upstream where one more stream keeps everyone at their reader's pace, and the
        rule that lets it in."""
        eligible = self._eligible(ticket)
        if not eligible:
            return None
        if self.config.routing == "least_busy":
            return min(eligible, key=lambda i: self.upstreams[i].in_flight), "route"
        best: tuple[float, int, int, AdmitRule] | None = None
        for i in eligible:
            u = self.upstreams[i]
            rule = self._admits(u, ticket, now_s)
            if rule is None:
                continue
            key = (self._ttft_s(u, u.in_flight), u.in_flight, i, rule)
            if best is None or key[:3] < best[:3]:
                best = key
        return None if best is None else (best[2], best[3])

    def _admits(self, u: UpstreamView, ticket: Ticket, now_s: float,
                queues: bool | None = None) -> AdmitRule | None:  # fmt: skip
        """Whether one more stream goes onto ``u`` now (the module docstring's admission), by
        which rule: it is idle or schedules itself; else not while a request waits in ``u``'s
        own queue (``queues``: :meth:`_engine_queues`, computed here when not given); else if
        its token rate still grows, or everyone keeps pace with one more — and not where a
        newcomer was measured to wait behind the others for its first token. None: it waits."""
        k = u.in_flight
        if k == 0:
            return "idle"
        if u.controlled:
            return "controlled"
        if self._engine_queues(u, now_s) if queues is None else queues:
            return None
        # Measured: a newcomer at this concurrency waits behind the others (one request more
        # would wait, adding nothing to the throughput either).
        if u.capacity.queueing_s(k, now_s) > ticket.spec.ttft_s:
            return None
        if not self._saturated(u):
            return "rate_grows"
        if self._untested(u) or self._starting(u):
            return None
        # Everyone keeps pace with one more even if the engine produces no more than the best
        # rate measured: the line alone, extrapolated, would let a queue's worth through.
        pace = max(ticket.reader.pace_tok_s, u.max_pace())
        if u.capacity.token_latency_s(k + 1, flat=True) <= 1.0 / pace:
            return "keeps_pace"
        return None

    def _engine_queues(self, u: UpstreamView, now_s: float) -> bool:
        """Whether a request on ``u`` has waited for its first token longer than an idle ``u``
        takes plus its reader's TTFT allowance: the engine holds it in a queue of its own (its
        one slot, batch or KV cache is full), so one more request would only join that queue —
        adding nothing to the engine's throughput and leaving the order to the engine's FCFS
        instead of the gateway's QoE queue. Live, so it clears as soon as the engine takes it."""
        if not u.capacity.ttft_measured:
            return False
        idle = u.capacity.ttft_s(0)
        return any(r.tracker.num_tokens == 0 and now_s - r.run_since_s > idle + r.spec.ttft_s
                   for r in u.running)  # fmt: skip

    def route(self, ticket: Ticket, now_s: float) -> int | None:
        """Without admission: the upstream for a request that goes at once (None: none is up)."""
        eligible = self._eligible(ticket) or [i for i, u in enumerate(self.upstreams)
                                              if u.serves(ticket.model)]  # fmt: skip
        if not eligible:
            return None
        if self.config.routing == "least_busy":
            return min(eligible, key=lambda i: self.upstreams[i].in_flight)
        fast = self._fast_path(ticket, now_s)
        if fast is not None:
            return fast[0]
        ups = self.upstreams
        return min(eligible,
                   key=lambda i: (self._ttft_s(ups[i], ups[i].in_flight), ups[i].in_flight))

    def _untested(self, u: UpstreamView) -> bool:
        """One more on ``u`` would go beyond a step above the highest concurrency measured
        there (:meth:`CapacityModel.frontier`). Every rule that sends a stream upstream stops
        here until the step is measured (the rate rule's exploration, the keeps-pace rule,
        adding onto a saturated upstream), so a plan never sends a queue's worth of requests
        whose effect nobody has seen."""
        frontier = u.capacity.frontier()
        return frontier is not None and u.in_flight >= frontier

    def _starting(self, u: UpstreamView) -> bool:
        """A request on ``u`` has not had its first token yet. Where ``u``'s token rate is
        saturated, a stream is sent there only if the engine serves it at once (it adds no
        throughput): each newcomer tests that, and the next goes once it started. Why: the token
        rate cannot see what else binds — a KV cache that holds fewer long streams than short
        ones — and a plan that sent many on the rate's word alone filled the engine's KV cache
        to where it queues or preempts (measured on the development split: 11 in one plan took
        vLLM to 40 running with its KV cache 98% full). Above the plateau this costs no
        throughput, by the plateau's definition; below it, the rate rule sends at once."""
        return any(r.tracker.num_tokens == 0 for r in u.running)

    def _saturated(self, u: UpstreamView) -> bool:
        """More in flight on ``u`` would not raise its token rate (holding costs no throughput)."""
        return u.capacity.saturated(u.in_flight, self.config.min_throughput_share)

    # -- valuation ------------------------------------------------------------------------------

    def _gain(self, t: Ticket, now_s: float, latency_s: float, first_delay_s: float,
              window_s: float) -> float:  # fmt: skip
        # No token yet: the reader takes the first one when it comes (the tracker's inference).
        no_token = t.state == "queued" or t.tracker.num_tokens == 0
        horizon = None if no_token else now_s + t.reader.slack_s(now_s)
        return predict_serve_gain(
            t.tracker, now_s, window_s, latency_s, first_delay_s,
            reader_horizon_s=horizon, reader_tds_tok_s=t.reader.pace_tok_s,
            max_new_tokens=t.left(),
        )  # fmt: skip

    def _first_s(self, t: Ticket, u: UpstreamView, k_before: int) -> float:
        """Seconds until ``t``'s next token if ``u`` takes it now with ``k_before`` in flight."""
        return (u.capacity.resume_ttft_s(k_before) if t.state == "parked"
                else self._ttft_s(u, k_before))  # fmt: skip

    def _candidate_gain(self, t: Ticket, u: UpstreamView, k_before: int, latency_s: float,
                        now_s: float) -> tuple[float, float]:  # fmt: skip
        """``t``'s value on ``u`` and the window it was valued over (``horizon_s`` after its
        first token)."""
        first = self._first_s(t, u, k_before) + latency_s
        window = first + self.config.horizon_s
        return self._gain(t, now_s, latency_s, first, window), window

    def _ttft_s(self, u: UpstreamView, k_before: int) -> float:
        """``u``'s expected TTFT with ``k_before`` in flight. One not yet timed is taken to be as
        fast as the fastest timed peer (replicas of a pool serve one model): a constant guess
        would make a busy replica whose TTFT was measured small look better than an idle one."""
        if u.capacity.ttft_measured:
            return u.capacity.ttft_s(k_before)
        peers = [v.capacity.ttft_s(0) for v in self.upstreams if v.capacity.ttft_measured]
        return min(peers) * (k_before + 1) if peers else u.capacity.ttft_s(k_before)

    def _loss(self, u: UpstreamView, now_s: float, cache: dict[int, float], index: int) -> float:
        """What ``u``'s running streams lose over the horizon if one more joins them."""
        if index in cache:
            return cache[index]
        k, h = u.in_flight, self.config.horizon_s
        now_l, next_l = u.capacity.token_latency_s(k), u.capacity.token_latency_s(k + 1)
        loss = 0.0
        if next_l > now_l:
            for r in u.running:
                loss += (self._gain(r, now_s, now_l, now_l, h)
                         - self._gain(r, now_s, next_l, next_l, h))  # fmt: skip
        cache[index] = loss
        return loss

    def _victim(self, u: UpstreamView, now_s: float) -> Ticket | None:
        """The running stream ``u`` could park: exact continuation, ran long enough, most slack;
        none while ``u``'s park budget is spent (:meth:`_park_paid`)."""
        if not self.config.parking or u.controlled or not self._park_paid(u, now_s):
            return None
        best: tuple[float, Ticket] | None = None
        for r in u.running:
            if not r.parkable or now_s - r.run_since_s < self.config.min_run_s:
                continue
            slack = r.reader.slack_s(now_s)
            if slack < self.config.park_min_slack_s:
                continue
            if best is None or slack > best[0]:
                best = (slack, r)
        return None if best is None else best[1]

    def _park_paid(self, u: UpstreamView, now_s: float) -> bool:
        """Whether ``u``'s last parks are paid back: their resumes' engine time drained at
        ``park_budget_share`` of each second since (the parks' cost to the token rate stays
        within the throughput floor)."""
        share = self.config.park_budget_share
        if share >= 1.0:
            return True
        u.park_debt_s = max(u.park_debt_s - share * max(now_s - u.debt_at_s, 0.0), 0.0)
        u.debt_at_s = now_s
        return u.park_debt_s <= 0.0

    # -- planning -------------------------------------------------------------------------------

    def plan(self, now_s: float) -> Plan:
        """Admit, resume and park for the next tick (module docstring)."""
        out = Plan()
        keep: list[Ticket] = []
        for t in self.queue:
            if now_s - t.queued_at_s > self.config.queue_timeout_s:
                t.state = "done"
                out.expired.append(t)
            else:
                keep.append(t)
        self.queue = keep
        candidates = self._ordered(now_s)
        losses: dict[int, float] = {}
        queues: dict[int, bool] = {}
        rejects = 0
        for t in candidates:
            if rejects >= self.config.max_rejects:
                break
            choice = self._place(t, now_s, losses, queues)
            if choice is None:
                rejects += 1
                continue
            rejects = 0
            u, victim, t.admitted_by = choice
            losses.pop(u, None)
            if victim is not None:
                view = self.upstreams[u]
                self._park(victim)
                out.park.append(victim)
                view.in_flight -= 1
                view.park_debt_s += view.capacity.resume_ttft_s(view.in_flight)
            was_parked = t.state == "parked"
            if was_parked:
                self.parked.remove(t)
            else:
                self.queue.remove(t)
            self.start(t, u, now_s)
            self.upstreams[u].in_flight += 1
            (out.resume if was_parked else out.admit).append((t, u))
        return out

    def _ordered(self, now_s: float) -> list[Ticket]:
        """Starving tickets (oldest first), parked ones whose readers run dry within the window
        (by value), queued ones by :meth:`_urgency`, then the other parked ones (module
        docstring, "Planning"); ties first come, first served."""
        scored: list[tuple[int, float, float, Ticket]] = []
        starving = self.config.starvation_s
        for t in self.parked:
            best = 0.0
            for i in self._where(t):
                u = self.upstreams[i]
                gain, _ = self._candidate_gain(
                    t, u, u.in_flight, u.capacity.token_latency_s(u.in_flight + 1), now_s)
                best = max(best, gain)
            scored.append((1, -best, t.queued_at_s, t) if best > _EPS
                          else (3, 0.0, t.queued_at_s, t))  # fmt: skip
        ttfts = [self._ttft_s(u, u.in_flight) for u in self.upstreams]  # once per plan
        for t in self.queue:
            if 0 < starving <= now_s - t.queued_at_s:
                scored.append((0, 0.0, t.queued_at_s, t))
                continue
            ttft = min((ttfts[i] for i in self._where(t)), default=0.0)
            scored.append((2, -self._urgency(t, now_s, ttft), t.queued_at_s, t))
        scored.sort(key=lambda s: s[:3])
        return [s[3] for s in scored]

    def _urgency(self, t: Ticket, now_s: float, ttft_s: float) -> float:
        """A queued ticket's order: the final QoE a second of waiting costs it, per token it will
        hold its upstream for, ``2p / (l + 2dp)²`` (module docstring, "Planning"): ``l`` the
        tokens it may produce, ``p`` its reader's pace, ``d`` how late its first token will be
        if it is sent now (``ttft_s``: the upstream's expected TTFT) past its reader's
        allowance."""
        left = t.left()
        length = float(left) if left else self.mean_tokens
        pace = max(t.reader.pace_tok_s, _EPS)
        late = max(now_s - t.queued_at_s + ttft_s - t.spec.ttft_s, 0.0)
        return 2.0 * pace / (max(length, 1.0) + 2.0 * late * pace) ** 2

    def _where(self, t: Ticket) -> list[int]:
        if t.state == "parked" and t.upstream is not None and self.upstreams[t.upstream].healthy:
            return [t.upstream]  # its prefix is cached there
        return [i for i, u in enumerate(self.upstreams) if u.healthy and u.serves(t.model)]

    def _place(self, t: Ticket, now_s: float, losses: dict[int, float],
               queues: dict[int, bool]) -> tuple[int, Ticket | None, AdmitRule] | None:  # fmt: skip
        """Where ``t`` goes now: (upstream, ticket to park there or None, the rule), or None
        (it waits).
        ``losses`` and ``queues`` cache :meth:`_loss` and :meth:`_engine_queues` per upstream
        for one plan."""
        limit = self.config.max_in_flight
        where = self._where(t)
        ups = self.upstreams
        for i in where:
            if i not in queues:
                queues[i] = self._engine_queues(ups[i], now_s)
        open_: list[tuple[float, int, AdmitRule]] = []
        for i in where:
            rule = (self._admits(ups[i], t, now_s, queues[i])
                    if limit <= 0 or ups[i].in_flight < limit else None)  # fmt: skip
            if rule is not None:
                open_.append((self._ttft_s(ups[i], ups[i].in_flight), i, rule))
        if open_:
            _, i, rule = min(open_, key=lambda o: o[:2])
            return i, None, rule
        best: tuple[float, int, Ticket | None] | None = None
        for i in where:
            u = ups[i]
            k = u.in_flight
            options: list[tuple[float, Ticket | None]] = []
            # Add onto a saturated upstream (not one whose own queue holds a request: it would
            # only join it; not beyond the measured step), valued over the horizon.
            if ((limit <= 0 or k < limit) and not queues[i] and not self._untested(u)
                    and not self._starting(u)):
                lat = u.capacity.token_latency_s(k + 1)
                first = self._first_s(t, u, k) + lat
                gain = self._gain(t, now_s, lat, first, self.config.horizon_s)
                options.append((gain - self._loss(u, now_s, losses, i), None))
            victim = self._victim(u, now_s)
            if victim is not None:  # swap: over the window after the candidate's first token
                lat = u.capacity.token_latency_s(k)
                gain, window = self._candidate_gain(t, u, k - 1, lat, now_s)
                options.append((gain - self._gain(victim, now_s, lat, lat, window), victim))
            for value, v in options:
                if value > _EPS and (best is None or value > best[0]):
                    best = (value, i, v)
        if best is None:
            return None
        return best[1], best[2], "value" if best[2] is None else "swap"

    # -- state for metrics ----------------------------------------------------------------------

    def queue_length(self) -> int:
        return len(self.queue)

    def oldest_wait_s(self, now_s: float) -> float:
        return max((now_s - t.queued_at_s for t in self.queue), default=0.0)

