"""The readers as the simulator's client model (engine/bench/reader_slack.py)."""

from __future__ import annotations

import math
import random

from engine.bench.reader_slack import ReaderSlack
from engine.bench.readers import Reader, reader_clock_s
from engine.policy import get_policy
from engine.policy.base import ReqState, RequestView
from engine.qoe import QoESpec, QoETracker, read_times
from engine.sim.profile import LatencyProfile
from engine.sim.simulator import simulate
from engine.sim.workload import TraceRequest

SPEC = QoESpec(ttft_s=1.0, tds_tok_s=4.0)


def view(req_id: str, arrival_s: float = 10.0) -> RequestView:
    return RequestView(req_id, arrival_s, SPEC, ReqState.RUNNING, 16, 0, 1,
                       QoETracker(SPEC, arrival_s))  # fmt: skip


def brute_consumed(reader: Reader, arrivals: list[float], now: float) -> int:
    pauses = reader.pauses_during([*arrivals, math.inf])
    got = [reader_clock_s(d, pauses) for d in arrivals if d <= now]
    reads = read_times(got, reader.actual)
    return sum(c <= reader_clock_s(now, pauses) + 1e-9 for c in reads)


def test_consumed_follows_the_reading_rule_on_the_readers_clock() -> None:
    rng = random.Random(5)
    reader = Reader(SPEC, 2.5, pause_after_s=3.0, pause_s=6.0)
    model = ReaderSlack({"a": reader}, interval_s=0.0)
    v = view("a")
    arrivals: list[float] = []
    t = 0.6
    while t < 40.0:
        burst = rng.choice([0, 0, 1, 1, 2, 5])
        arrivals += [t] * burst
        v.output_tokens = len(arrivals)
        rep = model(v, v.arrival_s + t)
        assert rep is not None
        assert rep.delivered == len(arrivals)
        assert rep.consumed == brute_consumed(reader, arrivals, t), t
        assert rep.tds_tok_s == 2.5
        first = arrivals[0] if arrivals else math.inf
        assert rep.paused == (first + 3.0 <= t < first + 9.0)
        t += rng.uniform(0.05, 0.6)


def test_reports_are_refreshed_at_the_reporter_interval() -> None:
    model = ReaderSlack({"a": Reader(SPEC, 4.0)}, interval_s=0.075)
    v = view("a", arrival_s=0.0)
    v.output_tokens = 3
    first = model(v, 1.0)
    v.output_tokens = 4
    assert model(v, 1.05) is first  # the engine still holds the last report it received
    later = model(v, 1.08)
    assert later is not first and later.delivered == 4 and later.t_s == 1.08
    assert model(view("unknown"), 1.0) is None  # no reader: no report, the policy infers


def test_a_simulation_runs_with_the_client_model() -> None:
    profile = LatencyProfile("tiny", kv_capacity_blocks=40, block_size=16, max_batch=4,
                             overhead_s=0.02, decode_s_per_seq=0.002)  # fmt: skip
    work = [TraceRequest(f"r{i}", 30, 40, SPEC) for i in range(12)]
    readers = {w.req_id: Reader(SPEC, 2.0, pause_after_s=1.0 if i % 3 == 0 else None,
                                pause_s=5.0) for i, w in enumerate(work)}  # fmt: skip
    arrivals = [0.3 * i for i in range(12)]
    result = simulate(work, arrivals, get_policy("andes"), profile, slack_fn=ReaderSlack(readers))
    assert all(r.output_tokens == 40 for r in result.requests)
