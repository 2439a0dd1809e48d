"""The simulator's invariants and costs, driven by small policies defined here and the real ones."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from core.qoe import QoESpec
from core.slack import SlackRecord
from engine.policy import available_policies, get_policy
from engine.policy.base import Capacity, Decision, Policy, ReqState, RequestView
from engine.sim.arrivals import ArrivalSpec, arrival_times
from engine.sim.errors import SimulationError
from engine.sim.profile import LatencyProfile
from engine.sim.simulator import SimConfig, SimResult, Simulator, simulate
from engine.sim.workload import TraceRequest, synthetic_workload

# Hand-computable: 10 ms per iteration plus 1 ms per prefilled token, nothing else.
SIMPLE = LatencyProfile(
    name="simple",
    kv_capacity_blocks=1000,
    block_size=16,
    overhead_s=0.01,
    prefill_s_per_token=0.001,
)


class Everyone(Policy):
    """Lists every live request, oldest first: over-admits and never preempts on its own."""

    name = "everyone"

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        return Decision(run=[r.req_id for r in sorted(requests, key=lambda r: r.arrival_s)])


class PreemptOnce(Everyone):
    """Like :class:`Everyone`, but drops ``victim`` for one step when it has ``at`` tokens."""

    name = "preempt-once"

    def __init__(self, victim: str, at: int) -> None:
        self.victim, self.at, self.done = victim, at, False

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        d = super().schedule(now_s, requests, capacity)
        for r in requests:
            if r.req_id == self.victim and r.output_tokens == self.at and not self.done:
                self.done = True
                d.run.remove(r.req_id)
                d.preempt.append(r.req_id)
        return d


def one(prompt: int = 100, output: int = 10) -> list[TraceRequest]:
    return [TraceRequest("r0", prompt, output, QoESpec(ttft_s=1.0, tds_tok_s=5.0))]


def check_invariants(
    result: SimResult, workload: Sequence[TraceRequest], arrivals: Sequence[float]
) -> None:
    assert [r.req_id for r in result.requests] == [w.req_id for w in workload]
    for r, w, a in zip(result.requests, workload, arrivals, strict=True):
        assert r.output_tokens == w.output_tokens == len(r.token_times_s)
        assert r.token_times_s[0] > a
        assert all(x <= y for x, y in zip(r.token_times_s, r.token_times_s[1:], strict=False))
        assert 0.0 <= r.qoe <= 1.0
    assert result.peak_kv_blocks <= result.kv_capacity_blocks


def test_single_request_timing_by_hand() -> None:
    r = simulate(one(), [0.0], Everyone(), SIMPLE).requests[0]
    # Prefill of 100 tokens: 0.01 + 0.1 s -> first token; then 9 decodes of 0.01 s.
    assert r.token_times_s == pytest.approx([0.11 + 0.01 * i for i in range(10)])
    assert r.ttft_s == pytest.approx(0.11) and r.qoe == 1.0 and r.preemptions == 0


NO_CACHE = SimConfig(prefix_caching=False)


def test_recompute_preemption_costs_a_reprefill() -> None:
    base = simulate(one(), [0.0], Everyone(), SIMPLE).requests[0]
    r = simulate(one(), [0.0], PreemptOnce("r0", at=5), SIMPLE, NO_CACHE).requests[0]
    assert r.preemptions == 1
    # Token 5 at 0.15; one idle tick (0.01) with nothing to run; then the resumed request
    # recomputes prompt + 5 generated tokens (0.01 + 0.105 s) before its 6th token.
    assert r.token_times_s[:5] == pytest.approx(base.token_times_s[:5])
    assert r.token_times_s[5] == pytest.approx(0.15 + 0.01 + 0.115)
    assert r.finish_s - base.finish_s == pytest.approx(0.01 + 0.105)


def test_a_resume_recomputes_only_what_the_prefix_cache_lost() -> None:
    base = simulate(one(), [0.0], Everyone(), SIMPLE).requests[0]
    result = simulate(one(), [0.0], PreemptOnce("r0", at=5), SIMPLE)
    r = result.requests[0]
    # Nothing else needs the blocks, so the 6 full blocks (96 tokens) of its 105 stay cached and
    # the resume computes 9 tokens: 0.01 + 0.009 s after the idle tick.
    assert r.token_times_s[5] == pytest.approx(0.15 + 0.01 + 0.019)
    assert r.finish_s - base.finish_s == pytest.approx(0.01 + 0.009)
    # Every admission asks the cache: the first for its 100-token prompt (a miss), the resume
    # for 105 tokens, 96 of them a hit.
    assert (result.cache_queried_tokens, result.cache_hit_tokens) == (205, 96)
    assert result.recomputed_tokens == 9


def test_a_resume_recomputes_what_other_requests_evicted() -> None:
    prof = LatencyProfile(name="tight", kv_capacity_blocks=8, block_size=16, overhead_s=0.01,
                          prefill_s_per_token=0.001)  # fmt: skip
    work = [*one(), TraceRequest("r1", 100, 1, QoESpec())]
    # r0 is parked after 5 tokens, and r1 (7 blocks), arriving then, is admitted first. r0's 6
    # cached blocks and 2 anonymous ones are free: r1 takes the 2, then evicts 5 of r0's, tail
    # first. r0 gets back its first block and recomputes the other 89 tokens.
    class NewestFirst(PreemptOnce):
        def schedule(self, now_s, requests, capacity):  # type: ignore[no-untyped-def]
            d = super().schedule(now_s, requests, capacity)
            d.run.reverse()
            return d

    result = simulate(work, [0.0, 0.151], NewestFirst("r0", at=5), prof)
    assert result.requests[0].preemptions == 1
    assert result.recomputed_tokens == 105 - 16


def test_swap_preemption_costs_block_transfers() -> None:
    prof = LatencyProfile(
        name="swap",
        kv_capacity_blocks=1000,
        block_size=16,
        overhead_s=0.01,
        prefill_s_per_token=0.001,
        swap_s_per_block=0.002,
    )
    r = simulate(one(), [0.0], PreemptOnce("r0", at=5), prof, SimConfig(preemption="swap"))
    req = r.requests[0]
    # 105 tokens = 7 blocks swapped out (0.014 s) and back in (0.014 s) around one idle tick; no
    # re-prefill: the 6th token comes from an ordinary decode step.
    assert req.token_times_s[5] == pytest.approx(0.15 + 0.014 + 0.01 + 0.01 + 0.014)
    assert req.preemptions == 1


def test_chunked_prefill_spreads_the_prompt() -> None:
    r = simulate(one(), [0.0], Everyone(), SIMPLE, SimConfig(chunked_prefill_tokens=30))
    # 30 + 30 + 30 + 10 prompt tokens in four iterations: 4 x 0.01 + 0.1 s.
    assert r.requests[0].ttft_s == pytest.approx(0.14)
    assert r.iterations == 4 + 9


def tiny_profile(blocks: int) -> LatencyProfile:
    return LatencyProfile(
        name="tiny",
        kv_capacity_blocks=blocks,
        block_size=4,
        max_batch=8,
        overhead_s=0.02,
        kv_read_s_per_token=1e-5,
        prefill_s_per_token=2e-4,
    )


def small_workload(n: int = 60, seed: int = 0) -> list[TraceRequest]:
    return synthetic_workload(
        n, seed=seed, mean_prompt_tokens=20, mean_output_tokens=40, max_output_tokens=120
    )


def test_overadmitting_policy_is_cut_back_like_vllm() -> None:
    w = small_workload()
    arrivals = [0.0] * len(w)  # everyone at once: memory must overflow as contexts grow
    prof = tiny_profile(blocks=60)
    result = simulate(w, arrivals, Everyone(), prof)
    check_invariants(result, w, arrivals)
    assert result.peak_kv_blocks == prof.kv_capacity_blocks  # it did fill up
    assert sum(r.preemptions for r in result.requests) > 0


def test_the_built_in_policies_are_registered() -> None:
    assert {"fcfs", "andes", "lqf", "round_robin"} <= set(available_policies())


@pytest.mark.parametrize("policy", available_policies())  # every one, a missing one fails above
def test_registered_policies_keep_the_invariants(policy: str) -> None:
    w = small_workload(80, seed=1)
    arrivals = arrival_times(ArrivalSpec("poisson", rate_rps=6.0), len(w), seed=1)
    for mode in ("recompute", "swap"):
        result = simulate(
            w, arrivals, get_policy(policy), tiny_profile(80), SimConfig(preemption=mode)
        )
        check_invariants(result, w, arrivals)


def test_light_load_is_perfect_and_overload_is_not() -> None:
    w = small_workload(150, seed=2)  # ~6,000 tokens for 8 slots of ~50 tokens/s each
    prof = tiny_profile(200)
    light = simulate(
        w, arrival_times(ArrivalSpec("poisson", 0.05), len(w), seed=2), Everyone(), prof
    )
    heavy = simulate(
        w, arrival_times(ArrivalSpec("poisson", 50.0), len(w), seed=2), Everyone(), prof
    )
    light_q = sum(r.qoe for r in light.requests) / len(w)
    heavy_q = sum(r.qoe for r in heavy.requests) / len(w)
    assert light_q > 0.99
    assert heavy_q < 0.7
    assert max(r.ttft_s for r in light.requests) < 0.5 < min(r.ttft_s for r in heavy.requests[-50:])


def test_client_model_hook_feeds_the_policy() -> None:
    seen: list[float] = []

    class Watcher(Everyone):
        def schedule(
            self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
        ) -> Decision:
            seen.extend(r.slack.slack_s(now_s) for r in requests if r.slack is not None)
            return super().schedule(now_s, requests, capacity)

    def paused_reader(view: RequestView, now_s: float) -> SlackRecord | None:
        return SlackRecord(
            stream_id=view.req_id, delivered=view.output_tokens, consumed=0, tds_tok_s=5.0,
            paused=True, t_s=now_s,
        )

    simulate(one(), [0.0], Watcher(), SIMPLE, slack_fn=paused_reader)
    assert len(seen) == 10 and all(s == float("inf") for s in seen)


def test_unknown_id_from_policy_is_an_error() -> None:
    class Liar(Everyone):
        def schedule(
            self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
        ) -> Decision:
            return Decision(run=["ghost"])

    with pytest.raises(SimulationError, match="'ghost', which is not live"):
        simulate(one(), [0.0], Liar(), SIMPLE)


def test_a_policy_that_runs_nothing_is_reported() -> None:
    class Idle(Everyone):
        def schedule(
            self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
        ) -> Decision:
            return Decision()

    with pytest.raises(SimulationError, match="ran nothing for 1 virtual seconds with 1 requests"):
        simulate(one(), [0.0], Idle(), SIMPLE, SimConfig(stall_limit_s=1.0))


def test_a_request_larger_than_the_cache_is_refused() -> None:
    with pytest.raises(SimulationError, match="'r0' needs 28 KV blocks"):
        simulate(one(prompt=100, output=10), [0.0], Everyone(), tiny_profile(20))


def test_waiting_requests_are_seen_as_waiting_then_running() -> None:
    states: list[tuple[str, ReqState]] = []

    class Recorder(Everyone):
        def schedule(
            self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
        ) -> Decision:
            states.extend((r.req_id, r.state) for r in requests)
            return super().schedule(now_s, requests, capacity)

    simulate(one(output=3), [0.0], Recorder(), SIMPLE)
    assert states == [("r0", ReqState.WAITING), ("r0", ReqState.RUNNING), ("r0", ReqState.RUNNING)]


class HoldWhile(Everyone):
    """Lists every live request except ``held`` while the clock is in ``[start, end)``."""

    name = "hold-while"

    def __init__(self, held: str, start: float, end: float) -> None:
        self.held, self.start, self.end = held, start, end

    def schedule(self, now_s, requests, capacity):  # type: ignore[no-untyped-def]
        d = super().schedule(now_s, requests, capacity)
        if self.start <= now_s < self.end:
            d.run.remove(self.held)
        return d


def test_a_held_request_keeps_its_kv_and_resumes_without_a_recompute() -> None:
    base = simulate(one(), [0.0], Everyone(), SIMPLE).requests[0]
    result = simulate(one(), [0.0], HoldWhile("r0", 0.145, 0.2), SIMPLE)
    r = result.requests[0]
    # Token 5 at 0.15; held until 0.2 (idle ticks), then a plain decode step: no prefill.
    assert r.preemptions == 0 and result.recomputed_tokens == 0
    assert r.token_times_s[:5] == pytest.approx(base.token_times_s[:5])
    gap = r.token_times_s[5] - r.token_times_s[4]
    assert gap > 0.05 and r.token_times_s[6] - r.token_times_s[5] == pytest.approx(0.01)
    assert result.peak_kv_blocks == 7  # its blocks stayed allocated the whole time


def test_the_token_budget_leaves_running_requests_out_as_vllm_does() -> None:
    # Budget 30: a running request still prefilling takes what is left after earlier decodes;
    # a decode after it in the order gets nothing that step (vLLM's running loop stops when the
    # budget is spent).
    work = [TraceRequest("a", 10, 5, QoESpec()), TraceRequest("b", 100, 1, QoESpec())]
    res = simulate(work, [0.0, 0.015], Everyone(), SIMPLE, SimConfig(chunked_prefill_tokens=30))
    a, b = res.requests
    # a prefills at once (10 tokens, 0.02 s), then b's prefill takes the budget left over.
    assert a.ttft_s == pytest.approx(0.02)
    assert len(a.token_times_s) == 5 and b.output_tokens == 1
    gaps = [y - x for x, y in zip(a.token_times_s, a.token_times_s[1:], strict=False)]
    assert max(gaps) > 0.01  # a's decode steps shared the budget with b's prefill chunks


def test_offload_brings_a_parked_request_back_from_the_host_without_recompute() -> None:
    prof = LatencyProfile(name="off", kv_capacity_blocks=8, block_size=16, overhead_s=0.01,
                          prefill_s_per_token=0.001, swap_s_per_block=0.0016)  # fmt: skip
    work = [*one(), TraceRequest("r1", 100, 1, QoESpec())]

    class NewestFirst(PreemptOnce):
        def schedule(self, now_s, requests, capacity):  # type: ignore[no-untyped-def]
            d = super().schedule(now_s, requests, capacity)
            d.run.reverse()
            return d

    for mode, recomputed in (("recompute", 105 - 16), ("offload", 105 - 96)):
        res = simulate(work, [0.0, 0.151], NewestFirst("r0", at=5), prof,
                       SimConfig(preemption=mode))  # fmt: skip
        # r1 evicts r0's cached blocks; with offload the host copy (6 full blocks) comes back at
        # 0.1 ms a token instead of being recomputed.
        assert res.recomputed_tokens == recomputed, mode
    cap = Simulator(work, [0.0, 0.151], Everyone(), prof, SimConfig(preemption="offload")).capacity
    assert cap.offload_s_per_token == pytest.approx(0.0001) and cap.park_cost_s(500) == 0.0
