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

from bench.snapshots import MIXED, random_report, random_view
from engine.policy import Capacity, ReqState
from engine.policy.andes import AndesPolicy, AndesReference
from engine.policy.plan import plan_step
from engine.policy.snapshot import Snapshot


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
        random_report(rng, v, now, MIXED)
        if (v.state, v.kv_blocks, v.slack, v.pending_tokens, v.cached_tokens) != before:
            snap.touch(v.req_id)
    for _ in range(rng.randint(0, 2)):  # a request finishes, others arrive
        if len(snap):
            snap.remove(snap[rng.randrange(len(snap))].req_id)
    for j in range(rng.randint(0, 2)):
        snap.add(random_view(rng, f"new{k}-{j}", now, MIXED))


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
        snap.add(random_view(rng, f"r{i}", now, MIXED))
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
