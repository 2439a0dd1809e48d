"""The gateway's scheduler on a fake clock: fast path, queueing by value, swaps, expiry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from core.qoe import QoESpec, QoETracker
from gateway.admission import Scheduler, SchedulerConfig, Ticket, UpstreamView
from gateway.capacity import CapacityConfig, CapacityModel


@dataclass
class FakeReader:
    buffered: float = 0.0  # tokens
    pace_tok_s: float = 5.0
    paused: bool = False

    def slack_s(self, now_s: float) -> float:
        return math.inf if self.paused else self.buffered / self.pace_tok_s


def _capacity(a: float, b: float) -> CapacityModel:
    """A model whose line is (a, b): fed with windows at concurrency 1 and 3."""
    m = CapacityModel(CapacityConfig(window_s=1.0), now_s=0.0)
    t = 0.0
    for k in (1, 3, 1, 3):
        m.in_flight(k, t)
        n = round(k * 1.0 / (a + b * k))
        for i in range(n):
            m.tokens(1, t + (i + 1) / n * 0.999)
        t += 1.0
    m.in_flight(0, t)
    m.tokens(0, t + 1.0)
    m.first_token(0.05, 0)
    return m


def _ticket(name: str, now: float, reader: FakeReader | None = None,
            tokens: int = 0, **kw: object) -> Ticket:
    spec = QoESpec(1.0, 5.0)
    tracker = QoETracker(spec, now)
    for i in range(tokens):
        tracker.add(now + 0.01 * i)
    return Ticket(name, spec, tracker, reader or FakeReader(), "m", now, **kw)  # type: ignore[arg-type]


def test_fast_path_while_everyone_keeps_pace() -> None:
    up = UpstreamView(_capacity(0.02, 0.002))
    s = Scheduler(SchedulerConfig(), [up])
    # Measured at 1 and 3 in flight: up to a step above (4) straight in, then a test first.
    assert up.capacity.frontier() == 4
    for i in range(4):
        assert s.add(_ticket(f"r{i}", 0.0), 0.0) == 0
        up.in_flight += 1
    late = _ticket("r4", 0.0)
    assert s.add(late, 0.0) is None and late in s.queue
    m, t = up.capacity, 10.0  # 4 in flight measured: everyone still at 35 tok/s
    m.in_flight(4, t)
    for i in range(140):
        m.tokens(1, t + (i + 1) / 140 * 1.999)
    m.in_flight(4, t + 2.0)
    for r in up.running:
        r.tracker.add(0.5)  # each had its first token (none waits in the engine's queue)
    assert m.frontier() == 5
    assert s.plan(t + 2.0).admit == [(late, 0)] and not s.queue


def test_a_full_upstream_queues_and_an_idle_one_takes_any_work() -> None:
    slow = UpstreamView(_capacity(0.0, 0.1))  # one slot: 10 tokens/s in all
    s = Scheduler(SchedulerConfig(), [slow])
    first = _ticket("first", 0.0)
    assert s.add(first, 0.0) == 0  # idle: straight in
    slow.in_flight = 1
    second = _ticket("second", 0.0)
    # 1/L(2) = 5 tok/s: not above the readers' 5 + margin? L(2)=0.2 → exactly the pace: admitted.
    third = _ticket("third", 0.0)
    s.add(second, 0.0)
    slow.in_flight = len(slow.running)
    s.add(third, 0.0)
    assert third in s.queue


def test_the_queue_is_ordered_by_value_and_bounded() -> None:
    up = UpstreamView(_capacity(0.0, 0.3), in_flight=1)
    running = _ticket("running", 0.0, FakeReader(buffered=0.0), tokens=3)
    running.state, running.upstream = "running", 0
    up.add(running)
    s = Scheduler(SchedulerConfig(queue_max=2, parking=False, max_in_flight=1), [up])
    old = _ticket("old", 0.0)
    new = _ticket("new", 5.0)
    assert s.add(new, 5.0) is None and s.add(old, 5.0) is None
    with pytest.raises(OverflowError):
        s.add(_ticket("over", 5.0), 5.0)
    # By value the fresh one goes first (serving it now can still make it whole) ...
    assert s._ordered(5.5)[0] is new
    # ... and by default it stays first until the old one times out.
    assert s._ordered(50.0)[0] is new
    plan = s.plan(5.5)
    assert not plan.admit  # the one slot is taken and nothing may be parked
    # With a starvation floor the old one goes first once it has waited that long.
    floored = Scheduler(SchedulerConfig(queue_max=2, parking=False, max_in_flight=1,
                                        starvation_s=10.0), [up])
    assert floored.add(new, 5.0) is None and floored.add(old, 5.0) is None
    assert floored._ordered(5.5)[0] is new
    assert floored._ordered(10.5)[0] is old


def _served_qoe(spec: QoESpec, waited_s: float, start_s: float, tokens: int,
                rate_tok_s: float) -> float:
    """The exact QoE of a stream queued ``waited_s`` before now, sent at ``start_s`` (from now)
    and served ``tokens`` tokens at ``rate_tok_s`` (its first token one token time later)."""
    tracker = QoETracker(spec, -waited_s)
    for i in range(tokens):
        tracker.add(start_s + (i + 1) / rate_tok_s)
    return tracker.qoe()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((200, 0.0, 5.0), (20, 0.0, 5.0)),  # a long answer and a short one, both fresh
        ((200, 0.0, 5.0), (20, 6.0, 5.0)),  # the short one has been late for seconds
        ((100, 0.0, 5.0), (100, 8.0, 5.0)),  # one size, a fresh and a late one
        ((100, 0.0, 3.0), (100, 0.0, 10.0)),  # one size, a slow and a fast reader
        ((64, 2.0, 4.0), (256, 0.0, 8.0)),
    ],
)
def test_the_queue_goes_first_where_it_loses_least_by_the_exact_qoe(
        a: tuple[int, float, float], b: tuple[int, float, float]) -> None:  # fmt: skip
    """Queued tickets (tokens asked for, seconds queued, reader's pace): of the two orders a
    one-slot upstream can serve them in, the scheduler's first choice gives the higher summed
    exact QoE (the order's reason, Smith's rule on the QoE formula: module docstring)."""
    now, rate = 100.0, 25.0
    up = UpstreamView(_capacity(0.0, 0.04), in_flight=1)
    s = Scheduler(SchedulerConfig(parking=False, max_in_flight=1), [up])
    tickets = []
    for name, (tokens, waited, pace) in zip("ab", (a, b), strict=True):
        t = _ticket(name, now - waited, FakeReader(pace_tok_s=pace), max_new_tokens=tokens)
        t.spec = QoESpec(1.0, pace)
        t.tracker = QoETracker(t.spec, now - waited)
        s.add(t, now - waited)
        tickets.append(t)

    def total(first: Ticket, second: Ticket) -> float:
        (n1, w1, _), (n2, w2, _) = (a if t is tickets[0] else b for t in (first, second))
        return (_served_qoe(first.spec, w1, 0.0, n1, rate)
                + _served_qoe(second.spec, w2, n1 / rate, n2, rate))  # fmt: skip

    chosen = s._ordered(now)
    other = list(reversed(chosen))
    assert total(*chosen) > total(*other)


def test_a_length_nobody_gave_is_the_mean_of_the_streams_served() -> None:
    up = UpstreamView(_capacity(0.0, 0.04), in_flight=0)
    s = Scheduler(SchedulerConfig(parking=False), [up])
    for i, n in enumerate((10, 30)):
        t = _ticket(f"done{i}", 0.0, tokens=n)
        s.start(t, 0, 0.0)
        s.release(t)  # its engine request ended: its length is known
        s.remove(t)  # and its reader is done (counted once)
    assert s.mean_tokens == pytest.approx(20.0)
    up.in_flight = 1
    s.config = SchedulerConfig(parking=False, max_in_flight=1)
    unsaid = _ticket("unsaid", 0.0)  # no max_tokens: taken to be 20 tokens long
    longer = _ticket("longer", 0.0, max_new_tokens=40)
    s.add(longer, 0.0)
    s.add(unsaid, 0.0)
    assert s._ordered(0.0) == [unsaid, longer]


def test_a_stream_with_seconds_buffered_yields_its_slot() -> None:
    up = UpstreamView(_capacity(0.0, 0.05), in_flight=1)
    rich = _ticket("rich", 0.0, FakeReader(buffered=60.0), tokens=80, parkable=True)
    rich.state, rich.upstream, rich.run_since_s = "running", 0, 0.0
    up.add(rich)
    s = Scheduler(SchedulerConfig(max_in_flight=1, park_min_slack_s=6.0, min_run_s=1.0), [up])
    waiting = _ticket("waiting", 10.0)
    assert s.add(waiting, 10.0) is None
    plan = s.plan(10.1)
    assert plan.park == [rich] and plan.admit == [(waiting, 0)]
    assert rich.state == "parked" and waiting.state == "running"
    # Later its reader runs low: it comes back (here into an idle upstream).
    up.discard(rich)
    up.in_flight = 0
    rich.reader.buffered = 2.0  # type: ignore[attr-defined]
    plan = s.plan(20.0)
    assert plan.resume == [(rich, 0)]


def test_a_newcomer_whose_first_token_takes_longer_than_the_horizon_still_gets_the_slot() -> None:
    # A one-slot CPU server: a prompt's prefill takes 5 s, longer than the 3 s horizon. A window
    # ending before the first token would value the newcomer at nothing and it would wait behind
    # a stream whose reader has a minute of text buffered.
    up = UpstreamView(_capacity(0.0, 0.05), in_flight=1)
    for _ in range(30):
        up.capacity.first_token(5.0, 0)
    assert up.capacity.ttft_s(0) == pytest.approx(5.0, abs=0.01)
    rich = _ticket("rich", 0.0, FakeReader(buffered=300.0, pace_tok_s=12.0), tokens=300,
                   parkable=True)
    rich.state, rich.upstream, rich.run_since_s = "running", 0, 0.0
    up.add(rich)
    s = Scheduler(SchedulerConfig(horizon_s=3.0), [up])
    waiting = _ticket("waiting", 10.0, FakeReader(pace_tok_s=12.0))
    assert s.add(waiting, 10.0) is None  # one slot, saturated, 10 tok/s each for two: queued
    plan = s.plan(10.1)
    assert plan.park == [rich] and plan.admit == [(waiting, 0)]


def test_no_park_when_the_continuation_is_not_exact_or_too_soon() -> None:
    up = UpstreamView(_capacity(0.0, 0.05), in_flight=1)
    rich = _ticket("rich", 0.0, FakeReader(buffered=60.0), tokens=80, parkable=False)
    rich.state, rich.upstream = "running", 0
    up.add(rich)
    s = Scheduler(SchedulerConfig(max_in_flight=1), [up])
    s.add(_ticket("w", 10.0), 10.0)
    assert not s.plan(10.1).park
    rich.parkable, rich.run_since_s = True, 10.0  # just (re)started: anti-thrash
    assert not s.plan(10.2).park


def test_queued_too_long_expires_and_a_removed_ticket_is_gone() -> None:
    up = UpstreamView(_capacity(0.0, 0.05), in_flight=1)
    s = Scheduler(SchedulerConfig(max_in_flight=1, queue_timeout_s=5.0, parking=False), [up])
    a, b = _ticket("a", 0.0), _ticket("b", 0.0)
    s.add(a, 0.0)
    s.add(b, 0.0)
    s.remove(b)  # its client left
    plan = s.plan(6.0)
    assert plan.expired == [a] and not s.queue


def test_routing_prefers_the_replica_with_the_shorter_predicted_ttft() -> None:
    busy = UpstreamView(_capacity(0.02, 0.002), in_flight=3)
    busy.capacity.first_token(2.0, 3)
    idle = UpstreamView(_capacity(0.02, 0.002), in_flight=0)
    s = Scheduler(SchedulerConfig(), [busy, idle])
    assert s.add(_ticket("x", 0.0), 0.0) == 1
    s2 = Scheduler(SchedulerConfig(routing="least_busy"), [busy, idle])
    assert s2.route(_ticket("y", 0.0), 0.0) == 1


def test_an_untimed_idle_replica_is_not_worse_than_a_busy_timed_one() -> None:
    # The busy replica's first tokens came fast (0.05 s); the idle one has no sample yet. A constant
    # prior (0.2 s) would lose to the busy one's 2 × 0.05 s: the idle replica takes its peers' pace.
    busy = UpstreamView(_capacity(0.02, 0.002), in_flight=1)
    idle = UpstreamView(CapacityModel(CapacityConfig(), now_s=0.0), in_flight=0)
    assert not idle.capacity.ttft_measured
    s = Scheduler(SchedulerConfig(), [busy, idle])
    assert s.add(_ticket("x", 0.0), 0.0) == 1
    assert Scheduler(SchedulerConfig(), [busy, idle]).route(_ticket("y", 0.0), 0.0) == 1


def test_a_batching_engine_below_its_throughput_plateau_is_not_held_back() -> None:
    # Every stream is already below its reader's pace (an overloaded engine) — but the engine's
    # token rate still grows with concurrency, so holding a newcomer would cost throughput.
    m = CapacityModel(CapacityConfig(window_s=1.0), now_s=0.0)
    t = 0.0
    for k in (4, 8, 4, 8):
        m.in_flight(k, t)
        n = round(k / 0.5)  # half a second per token per stream, whatever k: rate ∝ k
        for i in range(n):
            m.tokens(1, t + (i + 1) / n * 0.999)
        t += 1.0
    m.first_token(0.05, 0)
    up = UpstreamView(m, in_flight=8)
    s = Scheduler(SchedulerConfig(), [up])
    assert not m.saturated(8, 0.98)
    assert s.add(_ticket("a", t), t) == 0  # straight in, though L(9) > 1/pace
    up.in_flight = 16
    assert m.saturated(16, 0.98)  # a step above the highest concurrency measured: no further
    b = _ticket("b", t)
    assert s.add(b, t) is None and b in s.queue
    # Once 16 in flight is measured at the same per-stream latency (rate still rising), the
    # plan lets the queued one in.
    m.in_flight(16, t)
    for i in range(32):
        m.tokens(1, t + (i + 1) / 32 * 0.999)
    m.tokens(0, t + 1.0)
    assert s.plan(t + 1.0).admit == [(b, 0)]


def test_a_one_slot_server_that_queues_newcomers_is_time_sliced_not_queued_into() -> None:
    # llama-cpp-python's server takes requests in turn: a second one waits inside it for the
    # first to end (measured: 20 s to its first token with one ahead). The average per-stream
    # latency (k in flight sharing one slot's tokens) would say two readers at 5 tok/s keep
    # pace at 0.1 s per token each; they do not — the newcomer gets nothing for 20 s.
    m = _capacity(0.0, 0.05)
    for _ in range(10):
        m.first_token(0.5, 0, now_s=8.0)
        m.first_token(20.0, 1, now_s=8.0)
    assert m.token_latency_s(2) <= 1 / 5.0  # by the average, everyone "keeps pace"
    up = UpstreamView(m, in_flight=1)
    rich = _ticket("rich", 0.0, FakeReader(buffered=60.0), tokens=80, parkable=True)
    rich.state, rich.upstream, rich.run_since_s = "running", 0, 0.0
    up.add(rich)
    s = Scheduler(SchedulerConfig(), [up])
    waiting = _ticket("waiting", 10.0)
    assert s.add(waiting, 10.0) is None  # not sent behind it into the engine's own queue
    plan = s.plan(10.1)  # the slot is time-sliced instead: the rich reader has 12 s buffered
    assert plan.park == [rich] and plan.admit == [(waiting, 0)]
    # A queue delay measured long ago is tested again: what an engine holds changes.
    later = 8.0 + m.config.queueing_memory_s + 1.0
    assert m.queueing_s(1, 10.0) == pytest.approx(19.5, abs=0.1) and m.queueing_s(1, later) == 0.0


def test_a_passing_engine_queue_is_tested_again_soon_a_lasting_one_ever_less_often() -> None:
    # Stock vLLM after a burst: one newcomer at 4 in flight waited 3 s (its batch was full for a
    # moment). Admission then sends nothing at 4, so only a test can show the queue has drained:
    # it comes after about the delay measured, not minutes later.
    m = _capacity(0.02, 0.002)  # idle: 0.05 s to a first token
    m.first_token(3.05, 4, now_s=10.0)
    assert m.queueing_s(4, 12.0) == pytest.approx(3.0)
    assert m.queueing_s(5, 12.0) == pytest.approx(3.0)
    assert m.queueing_s(3, 12.0) == 0.0  # measured at 4: says nothing of fewer
    assert m.queueing_s(4, 13.1) == 0.0  # 3 s on: test again
    m.first_token(0.1, 4, now_s=13.5)  # the test finds no queue: admission goes on at once
    assert m.queueing_s(4, 13.6) == pytest.approx(0.05)
    # A queue that every test finds again (a one-slot server) is tested half as often each time.
    gaps, t = [], 20.0
    for _ in range(8):
        m.first_token(10.05, 4, now_s=t)
        t0 = t
        while m.queueing_s(4, t) > 0.5:
            t += 1.0
        gaps.append(t - t0)
    assert gaps[:4] == [10.0, 20.0, 40.0, 80.0] and set(gaps[4:]) == {m.config.queueing_memory_s}


def test_a_measured_engine_queue_stops_exploration_too() -> None:
    # The token rate is known only at one concurrency, so the rate rule would explore one more;
    # but a newcomer there was measured to wait 15 s behind the others for its first token.
    m = _capacity(0.0, 0.05)
    m._rate.clear()  # no rate known: the rule explores
    m.first_token(0.5, 0, now_s=1.0)
    assert not m.saturated(1, 0.98)
    up = UpstreamView(m, in_flight=1)
    s = Scheduler(SchedulerConfig(parking=False), [up])
    assert s.add(_ticket("a", 2.0), 2.0) == 0  # no delay measured at 1 yet: explore
    up.in_flight = 1  # the first ended; the explorer waited 15 s for it
    m.first_token(15.5, 1, now_s=17.0)
    b = _ticket("b", 18.0)
    assert s.add(b, 18.0) is None and b in s.queue


def test_nothing_more_is_sent_while_a_request_waits_in_the_engines_own_queue() -> None:
    # Below its throughput plateau by the rates measured so far — but one request has had no
    # first token for 5 s where an idle engine answers in 0.05 s: the engine's batch or cache is
    # full and it queues. One more would only join that queue, in the engine's order.
    up = UpstreamView(_capacity(0.02, 0.002), in_flight=2)
    streaming = _ticket("streaming", 0.0, tokens=10)
    stuck = _ticket("stuck", 0.0)
    for t in (streaming, stuck):
        t.state, t.upstream, t.run_since_s = "running", 0, 0.0
        up.add(t)
    s = Scheduler(SchedulerConfig(), [up])
    assert not up.capacity.saturated(2, 0.98)
    early = _ticket("early", 0.5)
    assert s.add(early, 0.5) == 0  # 0.5 s: still within its TTFT allowance
    up.in_flight += 1
    early.tracker.add(0.6)
    late = _ticket("late", 5.0)
    assert s.add(late, 5.0) is None and late in s.queue
    assert not s.plan(5.1).admit
    stuck.tracker.add(5.2)  # the engine took it: the queue is gone, the held one goes
    assert s.plan(5.3).admit == [(late, 0)]


def test_parks_are_bounded_by_what_their_resumes_cost_the_engine() -> None:
    # A one-slot server whose resumes were measured to take 4 s (the prompt and the text so far
    # prefilled again): at a 2% budget, one park per 200 s — time slicing that cost more would
    # buy QoE with the engine's token rate. A budget of 1 does not limit.
    def setup(share: float) -> tuple[Scheduler, UpstreamView, Ticket]:
        up = UpstreamView(_capacity(0.0, 0.05), in_flight=1)
        up.capacity.first_token(4.0, 0, resumed=True)
        config = SchedulerConfig(park_budget_share=share, max_in_flight=1, queue_timeout_s=1e4)
        s = Scheduler(config, [up])
        return s, up, _running(up, "r0")

    def _running(up: UpstreamView, name: str) -> Ticket:
        t = _ticket(name, 0.0, FakeReader(buffered=60.0), tokens=80, parkable=True)
        t.state, t.upstream, t.run_since_s = "running", 0, 0.0
        up.add(t)
        return t

    s, up, first = setup(0.02)
    s.add(_ticket("a", 10.0, FakeReader(pace_tok_s=12.0)), 10.0)
    assert s.plan(10.1).park == [first]
    assert up.park_debt_s == pytest.approx(4.0)
    second = _running(up, "r1")  # another rich stream takes the slot's place in the picture
    up.in_flight = 2
    s.add(_ticket("b", 11.0, FakeReader(pace_tok_s=12.0)), 11.0)
    assert not s.plan(11.1).park  # 1 s later: 3.98 s of engine time not yet paid back
    assert s.plan(10.1 + 4.0 / 0.02 + 1.0).park == [second]  # paid back: the next park
    s, up, first = setup(1.0)
    s.add(_ticket("a", 10.0, FakeReader(pace_tok_s=12.0)), 10.0)
    assert s.plan(10.1).park == [first]
    second = _running(up, "r1")
    up.in_flight = 2
    s.add(_ticket("b", 10.2, FakeReader(pace_tok_s=12.0)), 10.2)
    assert s.plan(10.3).park == [second]


def test_a_plan_sends_no_more_than_a_step_above_the_concurrency_measured() -> None:
    # The token rate is known at 8 in flight only (5 tok/s each: readers at 5 tok/s are just
    # kept pace with), and the line is flat there (the slope not identified): by the line one
    # more stream costs nobody much. Fifty fresh requests wait. The plan explores a step (to
    # 10) and sends no more until that step is measured — not the whole queue into the
    # engine's own (measured before: 84 requests in one plan; this test sent 46 then).
    m = CapacityModel(CapacityConfig(window_s=0.5), now_s=0.0)
    m.in_flight(8, 0.0)
    for i in range(160):
        m.tokens(1, (i + 1) * 0.025)  # 40 tok/s over 8 streams for 4 s
    m.first_token(0.05, 0)
    assert m.frontier() == 10
    up = UpstreamView(m, in_flight=8)
    s = Scheduler(SchedulerConfig(parking=False), [up])
    for i in range(50):
        s.queue.append(_ticket(f"q{i}", 4.0))
    plan = s.plan(4.0)
    assert len(plan.admit) == 2 and up.in_flight == 10 and len(s.queue) == 48


def test_above_the_plateau_one_stream_at_a_time_each_once_the_last_one_started() -> None:
    # The token rate is flat from 4 in flight (measured at 4 and 8: 40 tok/s), and by it 8
    # streams still get 5 tok/s each: readers at 2 tok/s keep pace with more. What the rate
    # cannot see is whether the engine can hold them (a KV cache full of long streams queues
    # newcomers, or preempts). So above the plateau a plan sends one, and the next only once
    # that one had its first token (measured before: 11 in one plan, vLLM's KV cache 98% full).
    m = CapacityModel(CapacityConfig(window_s=0.5), now_s=0.0)
    t = 0.0
    for k in (4, 8, 4, 8):
        m.in_flight(k, t)
        for i in range(40):
            m.tokens(1, t + (i + 1) / 40 * 0.999)
        t += 1.0
    m.first_token(0.05, 0)
    assert m.plateau(0.98) == 4 and m.frontier() == 10
    up = UpstreamView(m, in_flight=6)
    s = Scheduler(SchedulerConfig(parking=False), [up])
    slow = FakeReader(pace_tok_s=2.0)
    for i in range(6):
        r = _ticket(f"r{i}", 0.0, slow, tokens=3)
        r.state, r.upstream = "running", 0
        up.add(r)
    for i in range(5):
        s.queue.append(_ticket(f"q{i}", t, slow))
    plan = s.plan(t)
    assert [x.id for x, _ in plan.admit] == ["q0"] and plan.admit[0][0].admitted_by == "keeps_pace"
    assert not s.plan(t + 0.1).admit  # q0 still waits for its first token
    plan.admit[0][0].tracker.add(t + 0.2)
    assert [x.id for x, _ in s.plan(t + 0.3).admit] == ["q1"]
