"""The fast path decides exactly as the definition (Algorithm 1 over every request, re-read).

Random snapshots evolve over many steps as an adapter would drive them (decisions carried out by
:func:`engine.policy.plan.plan_step`, tokens delivered, slack reports coming and going, arrivals
and departures); the fast path reads them incrementally through a :class:`Snapshot`, the
definition re-reads every view each step.
"""

from __future__ import annotations

import random

import pytest
from policy_snapshots import BLOCK

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord
from engine.policy import Capacity, ReqState, RequestView
from engine.policy.andes import AndesPolicy, AndesReference
from engine.policy.base import ON_DEVICE
from engine.policy.plan import plan_step
from engine.policy.snapshot import Snapshot


def make_view(rng: random.Random, req_id: str, now: float) -> RequestView:
    spec = QoESpec(ttft_s=rng.uniform(0.2, 2.0), tds_tok_s=rng.uniform(2.0, 12.0))
    arrival = now - rng.uniform(0.0, 60.0)
    tracker = QoETracker(spec, arrival_s=arrival)
    state = rng.choice(list(ReqState))
    made = 0 if state is ReqState.WAITING else rng.randint(1, 200)
    t = arrival + rng.uniform(0.1, 2.0)
    for _ in range(made):
        t = min(t + rng.uniform(0.0, 0.4), now)
        tracker.add(t)
    prompt = rng.randint(1, 400)
    view = RequestView(
        req_id=req_id, arrival_s=arrival, spec=spec, state=state, prompt_tokens=prompt,
        output_tokens=made, kv_blocks=-(-(prompt + made) // BLOCK), tracker=tracker,
        pending_tokens=rng.choice([0, 0, 0, rng.randint(1, 50)]) if state in ON_DEVICE else 0,
        cached_tokens=rng.randint(0, prompt) if state is ReqState.PREEMPTED else 0,
    )  # fmt: skip
    maybe_report(rng, view, now)
    return view


def maybe_report(rng: random.Random, v: RequestView, now: float) -> None:
    made = v.output_tokens
    if made and rng.random() < 0.3:
        v.slack = SlackRecord(
            stream_id=v.req_id, delivered=made, consumed=max(made - rng.randint(0, 30), 0),
            tds_tok_s=rng.uniform(2.0, 12.0), paused=rng.random() < 0.15,
            t_s=now - rng.uniform(0.0, 2.0),
        )  # fmt: skip
    elif rng.random() < 0.1:
        v.slack = None


def carry_out(rng: random.Random, snap: Snapshot, d, cap: Capacity, now: float, k: int) -> None:  # type: ignore[no-untyped-def]
    """What an adapter would do with decision ``d`` (None: everyone runs), roughly."""
    states = {v.req_id: v.state for v in snap}
    if d is not None:
        plan = plan_step(d, states, cap.max_batch)
        runs, held, out = set(plan.running) | set(plan.admit), set(plan.hold), set(plan.preempt)
    else:
        runs, held, out = set(states), set(), set()
    for v in list(snap):
        before = (v.state, v.kv_blocks, v.slack, v.pending_tokens, v.cached_tokens)
        if v.req_id in out:
            v.state, v.cached_tokens = ReqState.PREEMPTED, rng.randint(0, v.prompt_tokens)
        elif v.req_id in held:
            v.state = ReqState.HELD
        elif v.req_id in runs:
            v.state = ReqState.RUNNING
            v.output_tokens += 1
            v.pending_tokens = 0
            snap.deliver(v.req_id, now)
        v.kv_blocks = -(-(v.prompt_tokens + v.output_tokens) // BLOCK)
        maybe_report(rng, v, now)
        if (v.state, v.kv_blocks, v.slack, v.pending_tokens, v.cached_tokens) != before:
            snap.touch(v.req_id)
    for _ in range(rng.randint(0, 2)):  # a request finishes, others arrive
        if len(snap):
            snap.remove(snap[rng.randrange(len(snap))].req_id)
    for j in range(rng.randint(0, 2)):
        snap.add(make_view(rng, f"new{k}-{j}", now))


@pytest.mark.parametrize("seed", range(16))
def test_fast_path_decides_as_the_definition(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([5, 40, 300])
    prefill_s = rng.choice([0.0, 0.0002, 0.002])
    cap = Capacity(
        kv_blocks=rng.randint(5, n * 12), block_size=BLOCK,
        max_batch=rng.choice([2, 16, 64, 256]), token_budget=None,
        token_latency_s=lambda b: 0.01 + 0.002 * b,
        prefill_latency_s=lambda tokens: prefill_s * tokens,
        offload_s_per_token=rng.choice([None, None, 1e-5]),
    )  # fmt: skip
    now = 1000.0
    snap = Snapshot()
    for i in range(n):
        snap.add(make_view(rng, f"r{i}", now))
    options = {"min_run_steps": 2, "park_budget": rng.choice([0.0, 0.02, 1.0])}
    fast, ref = AndesPolicy(**options), AndesReference(**options)
    decided = 0
    for k in range(30):
        d = fast.schedule(now, snap, cap)
        assert d == ref.schedule(now, list(snap), cap)
        assert fast.last.binds == ref.last.binds and fast.last.batch == ref.last.batch
        decided += d is not None
        now += rng.uniform(0.0, 0.2)
        carry_out(rng, snap, d, cap, now, k)
    assert decided  # every seed makes the policy decide at least once
