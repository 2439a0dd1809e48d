"""The fast knapsack decides exactly as the straightforward one (Algorithm 1 over every request)."""

from __future__ import annotations

import random

import pytest
from policy_snapshots import BLOCK

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord
from engine.policy import Capacity, Decision, ReqState, RequestView
from engine.policy.andes import AndesPolicy
from engine.policy.fcfs import fcfs_decision


class StraightforwardAndes(AndesPolicy):
    """``andes`` as first written: FCFS, its trigger, then Algorithm 1 over the whole snapshot."""

    def schedule(self, now_s, requests, capacity):  # type: ignore[no-untyped-def]
        step = self._step
        self._step += 1
        base = fcfs_decision(requests, capacity)
        self.last_triggered = self._triggered(now_s, requests, capacity, base)
        d = self._knapsack_reference(now_s, requests, capacity) if self.last_triggered else base
        running = {r.req_id for r in requests if r.state is ReqState.RUNNING}
        for req_id in d.run:
            if req_id not in running:
                self._admitted_at[req_id] = (step, now_s)
        return d


def snapshot(rng: random.Random, n: int, now: float) -> list[RequestView]:
    views = []
    for i in range(n):
        spec = QoESpec(ttft_s=rng.uniform(0.2, 2.0), tds_tok_s=rng.uniform(2.0, 12.0))
        arrival = now - rng.uniform(0.0, 60.0)
        tracker = QoETracker(spec, arrival_s=arrival)
        state = rng.choice(list(ReqState))
        made = 0 if state is ReqState.WAITING else rng.randint(1, 200)
        t = arrival + rng.uniform(0.1, 2.0)
        for _ in range(made):
            t = min(t + rng.uniform(0.0, 0.4), now)
            tracker.add(t)
        slack = None
        if made and rng.random() < 0.3:
            slack = SlackRecord(
                stream_id=f"r{i}", delivered=made, consumed=max(made - rng.randint(0, 30), 0),
                tds_tok_s=rng.uniform(2.0, 12.0), paused=rng.random() < 0.15,
                t_s=now - rng.uniform(0.0, 2.0),
            )  # fmt: skip
        prompt = rng.randint(1, 400)
        views.append(
            RequestView(
                req_id=f"r{i}",
                arrival_s=arrival,
                spec=spec,
                state=state,
                prompt_tokens=prompt,
                output_tokens=made,
                kv_blocks=-(-(prompt + made) // BLOCK),
                tracker=tracker,
                slack=slack,
            )
        )
    return views


def apply(rng: random.Random, views: list[RequestView], d: Decision, now: float) -> None:
    """Carry a decision out roughly as an adapter would, with arrivals and departures."""
    run, out = set(d.run), set(d.preempt)
    for v in views:
        if v.req_id in out:
            v.state = ReqState.PREEMPTED
        elif v.req_id in run:
            v.state = ReqState.RUNNING
            v.tracker.add(now)
            v.output_tokens += 1
        v.kv_blocks = -(-(v.prompt_tokens + v.output_tokens) // BLOCK)
        if v.slack is not None and rng.random() < 0.1:
            v.slack = None
    for _ in range(rng.randint(0, 2)):  # a request finishes, another arrives
        if views:
            views.pop(rng.randrange(len(views)))
    views.extend(snapshot(rng, rng.randint(0, 2), now))
    for j, v in enumerate(views[-2:]):
        v.req_id = f"new{now:.3f}-{j}"


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_decides_as_the_straightforward_one(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([5, 40, 300])
    max_batch = rng.choice([2, 16, 64, 256])
    prefill_s = rng.choice([0.0, 0.0002, 0.002])
    cap = Capacity(
        kv_blocks=rng.randint(5, n * 12), block_size=BLOCK, max_batch=max_batch,
        token_latency_s=lambda b: 0.01 + 0.002 * b,
        prefill_latency_s=lambda tokens: prefill_s * tokens,
    )  # fmt: skip
    now = 1000.0
    views = snapshot(rng, n, now)
    fast, ref = AndesPolicy(min_run_steps=2), StraightforwardAndes(min_run_steps=2)
    triggered = 0
    for _ in range(25):
        d = fast.schedule(now, views, cap)
        assert d == ref.schedule(now, views, cap)
        assert fast.last_triggered == ref.last_triggered
        triggered += fast.last_triggered
        now += rng.uniform(0.0, 0.2)
        apply(rng, views, d, now)
    assert triggered  # the comparison covered the knapsack
