"""A virtual-time continuous-batching engine driven by a scheduling policy.

Each iteration (one engine step, as in vLLM):

1. Requests whose arrival time has come join the live set as ``WAITING``.
2. The policy gets the live :class:`~engine.policy.base.RequestView` objects (reused between steps,
   updated in place) and the :class:`~engine.policy.base.Capacity`, and returns a ``Decision``.
3. The decision is applied in three passes, following vLLM v1's ``Scheduler.schedule``:

   a. running requests the policy dropped (not in ``run``, or in ``preempt``) are preempted;
   b. the kept running requests, in the policy's order, get the KV blocks for their next step; when
      the cache overflows, the request at the *end* of that order is preempted (vLLM pops
      ``running[-1]``) until the rest fit — this is what happens when a policy over-admits;
   c. unless (b) had to preempt, waiting/preempted requests in ``run`` are admitted in order while
      KV blocks and ``max_batch`` allow; admission stops at the first that does not fit (vLLM
      ``break``s out of its waiting loop too).

4. The iteration runs: every admitted request is prefilled (its prompt, plus its generated tokens
   when resuming after a recompute preemption) and every other running request decodes one token.
   Prefill is *whole* by default — a request prefills in the iteration that admits it and emits its
   next token at that iteration's end; with ``chunked_prefill_tokens`` the iteration's token budget
   (decode tokens included, like vLLM's ``max_num_batched_tokens``) is split over prefilling
   requests in order, and a request emits a token in the iteration that finishes its prefill. The
   iteration lasts :meth:`LatencyProfile.iteration_s` plus any swap time, and every token it
   produces is delivered to its request's :class:`~core.qoe.QoETracker` at the iteration's end.

KV accounting: a request that has generated ``k`` tokens needs ``ceil((prompt + k) / block_size)``
blocks to take its next step (``engine.policy.base.step_blocks``; vLLM's
``num_computed_tokens + 1``).
A request finishes when it has produced its trace output length, and frees its blocks.

Preemption: ``recompute`` (vLLM v1's only mode) frees the blocks and re-prefills prompt + generated
tokens on resume; ``swap`` moves the blocks to host memory (unbounded) at ``swap_s_per_block`` each
way, added to the iteration in which it happens.

Extension point — client model: ``slack_fn(view, now_s)`` is called for every live request before
each policy call and its return value (a :class:`~core.slack.SlackRecord` or None) is put in
``view.slack``. It lets a study simulate readers whose measured slack differs from the declared spec
(slower or paused readers, network delay) without changing the engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord
from engine.policy.base import Capacity, Policy, ReqState, RequestView
from engine.sim.errors import SimulationError
from engine.sim.profile import LatencyProfile
from engine.sim.workload import TraceRequest

__all__ = ["RequestResult", "SimConfig", "SimResult", "Simulator", "SlackFn", "simulate"]

SlackFn = Callable[[RequestView, float], "SlackRecord | None"]
"""Client model hook: ``(view, now_s) -> SlackRecord | None`` for each live request each step."""

PREEMPTION_MODES = ("recompute", "swap")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Engine options that are not part of the hardware profile."""

    preemption: str = "recompute"  # "recompute" or "swap"
    chunked_prefill_tokens: int | None = None  # per-iteration token budget; None = whole prefills
    idle_tick_s: float = 0.01  # how far time moves when requests wait but the policy runs none
    stall_limit_s: float = 3600.0  # virtual seconds of such idling before the run is declared stuck
    progress: bool = False  # show a tqdm progress bar (finished requests)

    def __post_init__(self) -> None:
        if self.preemption not in PREEMPTION_MODES:
            raise ValueError(
                f"preemption must be one of {', '.join(PREEMPTION_MODES)}, got {self.preemption!r}"
            )
        c = self.chunked_prefill_tokens
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise ValueError(f"chunked_prefill_tokens must be None or an int >= 1, got {c!r}")
        if not (math.isfinite(self.idle_tick_s) and self.idle_tick_s > 0):
            raise ValueError(f"idle_tick_s must be a finite number > 0, got {self.idle_tick_s!r}")
        if not (self.stall_limit_s > 0):
            raise ValueError(f"stall_limit_s must be > 0, got {self.stall_limit_s!r}")


@dataclass(slots=True)
class RequestResult:
    """What happened to one request."""

    req_id: str
    arrival_s: float  # absolute, virtual seconds
    prompt_tokens: int
    output_tokens: int
    spec: QoESpec
    token_times_s: list[float]  # absolute delivery time of each output token
    preemptions: int
    qoe: float  # final QoE (core.qoe definition)

    @property
    def ttft_s(self) -> float:
        """Seconds from arrival to the first token."""
        return self.token_times_s[0] - self.arrival_s

    @property
    def finish_s(self) -> float:
        """Absolute time of the last token."""
        return self.token_times_s[-1]


@dataclass(slots=True)
class SimResult:
    """The outcome of one run."""

    policy: str
    profile: str
    requests: list[RequestResult]  # in workload order
    iterations: int = 0
    peak_kv_blocks: int = 0  # most KV blocks held at once
    kv_capacity_blocks: int = 0
    busy_s: float = 0.0  # virtual seconds spent in iterations
    wall_s: float = 0.0  # real seconds the simulation took
    policy_wall_s: float = 0.0  # real seconds spent inside policy.schedule
    meta: dict[str, object] = field(default_factory=dict)  # free-form labels (rate, arrivals, ...)


class _Seq:
    """The engine's private state of one request (its view is what the policy sees)."""

    __slots__ = ("held", "index", "pending", "swapped", "target", "times", "view")

    def __init__(self, index: int, view: RequestView, target: int) -> None:
        self.index = index
        self.view = view
        self.target = target  # output tokens to produce
        self.held = 0  # KV blocks held on the GPU
        self.pending = 0  # prompt tokens still to (re)compute before the next token
        self.swapped = False  # its KV is on the host (swap preemption)
        self.times: list[float] = []


class Simulator:
    """Runs one policy over one workload; see the module docstring for the step semantics."""

    def __init__(
        self,
        workload: Sequence[TraceRequest],
        arrivals_s: Sequence[float],
        policy: Policy,
        profile: LatencyProfile,
        config: SimConfig | None = None,
        slack_fn: SlackFn | None = None,
    ) -> None:
        if len(workload) != len(arrivals_s):
            raise ValueError(
                f"workload has {len(workload)} requests but {len(arrivals_s)} arrival times"
            )
        self.workload = list(workload)
        self.arrivals_s = [float(a) for a in arrivals_s]
        if any(not math.isfinite(a) for a in self.arrivals_s):
            raise ValueError("arrival times must be finite")
        self.policy = policy
        self.profile = profile
        self.config = config or SimConfig()
        self.slack_fn = slack_fn
        bs = profile.block_size
        for req in self.workload:
            need = -(-(req.prompt_tokens + req.output_tokens) // bs)
            if need > profile.kv_capacity_blocks:
                raise SimulationError(
                    f"request {req.req_id!r} needs {need} KV blocks (prompt {req.prompt_tokens} +"
                    f" output {req.output_tokens} tokens) but the profile {profile.name!r} holds"
                    f" {profile.kv_capacity_blocks}"
                )
        self._mean_context_tokens = 1.0  # of the running batch; read by capacity.token_latency_s
        self.capacity = Capacity(
            kv_blocks=profile.kv_capacity_blocks,
            block_size=bs,
            max_batch=profile.max_batch,
            token_latency_s=self._token_latency_s,
            prefill_latency_s=profile.prefill_s,
        )

    def _token_latency_s(self, batch: int) -> float:
        # The policy asks "how long is a step with this many requests?"; the context each request
        # brings is taken as the running batch's current mean.
        return self.profile.decode_s(batch, int(batch * self._mean_context_tokens))

    def run(self) -> SimResult:
        """Simulate until every request has produced its output; returns the per-request record."""
        from tqdm import tqdm

        wall0 = time.perf_counter()
        prof, cfg, cap = self.profile, self.config, self.capacity
        bs, max_batch = prof.block_size, prof.max_batch
        swap_mode = cfg.preemption == "swap"
        chunk = cfg.chunked_prefill_tokens
        n = len(self.workload)
        order = sorted(range(n), key=lambda i: self.arrivals_s[i])  # stable: ties keep trace order
        results: list[RequestResult | None] = [None] * n
        live: dict[str, _Seq] = {}
        views: list[RequestView] = []
        views_dirty = False
        running: list[_Seq] = []
        free = prof.kv_capacity_blocks
        peak = 0
        iterations = 0
        busy_s = 0.0
        policy_wall = 0.0
        next_arr = 0
        now = self.arrivals_s[order[0]] if n else 0.0
        idle_since: float | None = None
        finished = 0
        bar = tqdm(total=n, disable=not cfg.progress, unit="req", leave=False, mininterval=0.5)

        def blocks_for(s: _Seq) -> int:
            return max(1, -(-(s.view.prompt_tokens + s.view.output_tokens) // bs))

        swap_cost_s = 0.0

        def preempt(s: _Seq) -> None:
            nonlocal free, swap_cost_s
            v = s.view
            free += s.held
            if swap_mode:
                swap_cost_s += prof.swap_s(s.held)
                s.swapped = True
            s.held = 0
            v.state = ReqState.PREEMPTED
            v.preemptions += 1
            v.kv_blocks = blocks_for(s)

        while finished < n:
            while next_arr < n and self.arrivals_s[order[next_arr]] <= now:
                i = order[next_arr]
                req = self.workload[i]
                arrival = self.arrivals_s[i]
                view = RequestView(
                    req_id=req.req_id,
                    arrival_s=arrival,
                    spec=req.spec,
                    state=ReqState.WAITING,
                    prompt_tokens=req.prompt_tokens,
                    output_tokens=0,
                    kv_blocks=0,
                    tracker=QoETracker(req.spec, arrival),
                )
                s = _Seq(i, view, req.output_tokens)
                view.kv_blocks = blocks_for(s)
                if req.req_id in live:
                    raise SimulationError(f"two live requests share the id {req.req_id!r}")
                live[req.req_id] = s
                views_dirty = True
                next_arr += 1
            if not live:
                now = self.arrivals_s[order[next_arr]]
                continue
            if views_dirty:
                views = [s.view for s in live.values()]
                views_dirty = False
            if self.slack_fn is not None:
                for s in live.values():
                    s.view.slack = self.slack_fn(s.view, now)

            t0 = time.perf_counter()
            decision = self.policy.schedule(now, views, cap)
            policy_wall += time.perf_counter() - t0

            # (a) preempt what the policy dropped.
            dropped = set(decision.preempt)
            wanted: list[_Seq] = []
            seen: set[str] = set()
            for rid in decision.run:
                if rid in seen or rid in dropped:
                    continue
                s = live.get(rid)
                if s is None:
                    raise SimulationError(
                        f"policy {self.policy.name!r} asked to run {rid!r}, which is not live"
                    )
                seen.add(rid)
                wanted.append(s)
            for s in running:
                if s.view.req_id not in seen:
                    preempt(s)
            kept = [s for s in wanted if s.view.state is ReqState.RUNNING]
            while len(kept) > max_batch:
                preempt(kept.pop())
            # (b) grow the kept ones, preempting from the end of the order on overflow.
            overflow = False
            running = []
            for s in kept:
                if s.view.state is not ReqState.RUNNING:
                    continue  # preempted below as a victim of an earlier request's growth
                need = blocks_for(s) - s.held
                while need > free and kept[-1] is not s:
                    victim = kept.pop()
                    if victim.view.state is ReqState.RUNNING:
                        preempt(victim)
                        overflow = True
                if need > free:
                    preempt(s)
                    overflow = True
                    break
                free -= need
                s.held += need
                s.view.kv_blocks = s.held
                running.append(s)
            # (c) admit, in the policy's order, while memory and the batch limit allow.
            if not overflow:
                for s in wanted:
                    if s.view.state is ReqState.RUNNING:
                        continue
                    if len(running) >= max_batch:
                        break
                    need = blocks_for(s)
                    if need > free:
                        break
                    free -= need
                    s.held = need
                    v = s.view
                    v.state = ReqState.RUNNING
                    v.kv_blocks = need
                    if s.swapped:
                        swap_cost_s += prof.swap_s(need)
                        s.swapped = False
                    else:
                        s.pending = v.prompt_tokens + v.output_tokens
                    running.append(s)
            used = prof.kv_capacity_blocks - free
            if free < 0:  # the passes above never allow this; fail loudly if they ever do
                raise SimulationError(f"internal error: KV over capacity ({used} blocks)")
            peak = max(peak, used)

            if not running:
                if swap_cost_s:
                    now += swap_cost_s
                    busy_s += swap_cost_s
                    swap_cost_s = 0.0
                if idle_since is None:
                    idle_since = now
                elif now - idle_since > cfg.stall_limit_s and next_arr >= n:
                    raise SimulationError(
                        f"policy {self.policy.name!r} ran nothing for {cfg.stall_limit_s:g} virtual"
                        f" seconds with {len(live)} requests waiting"
                    )
                nxt = self.arrivals_s[order[next_arr]] if next_arr < n else math.inf
                now = min(nxt, now + cfg.idle_tick_s)
                continue
            idle_since = None

            # (4) one iteration: decode everyone ready, prefill (chunks of) the rest.
            emit: list[_Seq] = []
            context = 0
            for s in running:
                if s.pending == 0:
                    emit.append(s)
                    context += s.view.prompt_tokens + s.view.output_tokens
            decode_seqs = len(emit)
            budget = math.inf if chunk is None else max(chunk - decode_seqs, 0)
            prefill = 0
            for s in running:
                if s.pending and budget > 0:
                    take = s.pending if s.pending <= budget else int(budget)
                    s.pending -= take
                    budget -= take
                    prefill += take
                    if s.pending == 0:
                        emit.append(s)
            self._mean_context_tokens = context / decode_seqs if decode_seqs else 1.0
            dt = prof.iteration_s(decode_seqs, context, prefill) + swap_cost_s
            swap_cost_s = 0.0
            now += dt
            busy_s += dt
            iterations += 1

            done = 0
            for s in emit:
                v = s.view
                v.output_tokens += 1
                v.tracker.add(now, 1)
                s.times.append(now)
                if v.output_tokens >= s.target:
                    free += s.held
                    s.held = 0
                    del live[v.req_id]
                    results[s.index] = RequestResult(
                        req_id=v.req_id,
                        arrival_s=v.arrival_s,
                        prompt_tokens=v.prompt_tokens,
                        output_tokens=v.output_tokens,
                        spec=v.spec,
                        token_times_s=s.times,
                        preemptions=v.preemptions,
                        qoe=v.tracker.qoe(),
                    )
                    done += 1
            if done:
                finished += done
                running = [s for s in running if s.view.req_id in live]
                views_dirty = True
                bar.update(done)
        bar.close()

        assert all(r is not None for r in results)
        return SimResult(
            policy=self.policy.name,
            profile=prof.name,
            requests=[r for r in results if r is not None],
            iterations=iterations,
            peak_kv_blocks=peak,
            kv_capacity_blocks=prof.kv_capacity_blocks,
            busy_s=busy_s,
            wall_s=time.perf_counter() - wall0,
            policy_wall_s=policy_wall,
        )


def simulate(
    workload: Sequence[TraceRequest],
    arrivals_s: Sequence[float],
    policy: Policy,
    profile: LatencyProfile,
    config: SimConfig | None = None,
    slack_fn: SlackFn | None = None,
) -> SimResult:
    """Build a :class:`Simulator` and run it."""
    return Simulator(workload, arrivals_s, policy, profile, config, slack_fn).run()
