"""A virtual-time continuous-batching engine driven by a scheduling policy.

One engine step reads as vLLM v1's (``vllm/v1/core/sched/scheduler.py``) and nano-vllm's engine
step: **admit arrivals → schedule → apply the decision → execute → postprocess**.

1. Requests whose arrival time has come join the :class:`~engine.policy.snapshot.Snapshot` as
   ``WAITING``.
2. The policy gets the snapshot and the :class:`~engine.policy.base.Capacity` and returns a
   ``Decision`` (or ``None``: the engine's own FCFS order); :func:`engine.policy.plan.plan_step`
   turns it into a :class:`~engine.policy.plan.StepPlan`, the rules the vLLM adapter follows too.
3. The plan is applied as vLLM's ``Scheduler.schedule`` does:

   a. ``preempt``: their KV is freed (a park; see "Preemption" below); ``hold``: they keep their
      KV and sit the step out;
   b. ``running``, in priority order, each gets its next chunk of tokens while the step's token
      budget lasts (vLLM's ``max_num_batched_tokens``; decodes take one token, a request still
      prefilling takes what is left of the budget) and the KV blocks for it; when the cache
      overflows, the *last* request of the order is preempted (vLLM pops ``running[-1]``) until
      the rest fit — what happens when a policy over-admits;
   c. unless (b) had to preempt, ``admit`` requests are admitted in order while the batch limit,
      the token budget and KV blocks allow; admission stops at the first that does not fit.

4. The step runs: its time is :meth:`LatencyProfile.iteration_s` of its decoding sequences, their
   context and its prefill tokens (plus synchronous swaps), and every request whose computation
   caught up with its context emits a token, delivered to its tracker at the step's end.

KV accounting (:class:`~engine.sim.kv_cache.KVCache`): a request whose KV covers ``c`` tokens
holds ``ceil(c / block_size)`` blocks; a finished request frees them.

Preemption: ``recompute`` (vLLM v1): the blocks are freed but stay in the prefix cache until
reused, and readmission recomputes only what was evicted; ``offload`` (vLLM's KV offloading on
GPUs): as ``recompute``, and the host copy made in the background as blocks filled is loaded back
at the host link's speed (``swap_s_per_block``) before the request runs again, beside the other
requests' computation; ``swap`` (vLLM v0): every block moves to the host and back, each way
stalling the whole step for ``swap_s_per_block`` a block.

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
from engine.policy.base import ON_DEVICE, Capacity, Policy, ReqState, RequestView
from engine.policy.plan import StepPlan, UnknownRequest, fcfs_plan, plan_step
from engine.policy.snapshot import Snapshot
from engine.sim.errors import SimulationError
from engine.sim.kv_cache import KVCache
from engine.sim.profile import LatencyProfile
from engine.sim.workload import TraceRequest

__all__ = ["RequestResult", "SimConfig", "SimResult", "Simulator", "SlackFn", "simulate"]

SlackFn = Callable[[RequestView, float], "SlackRecord | None"]
"""Client model hook: ``(view, now_s) -> SlackRecord | None`` for each live request each step."""

PREEMPTION_MODES = ("recompute", "offload", "swap")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Engine options that are not part of the hardware profile."""

    preemption: str = "recompute"  # "recompute", "offload" or "swap" (module docstring)
    chunked_prefill_tokens: int | None = None  # per-step token budget; None = whole prefills
    prefix_caching: bool = True  # parked requests get back what the cache still holds
    host_kv_blocks: int | None = None  # offload: host capacity in blocks; None: unbounded
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
        h = self.host_kv_blocks
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 0):
            raise ValueError(f"host_kv_blocks must be None or an int >= 0, got {h!r}")
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
    recomputed_tokens: int = 0  # context tokens computed again after parks
    cache_queried_tokens: int = 0  # context tokens readmissions needed
    cache_hit_tokens: int = 0  # of which the prefix cache (or the host) gave back
    meta: dict[str, object] = field(default_factory=dict)  # free-form labels (rate, arrivals, ...)

    @property
    def prefix_hit_rate(self) -> float:
        """Share of readmitted context the cache gave back (nan when nothing was readmitted)."""
        q = self.cache_queried_tokens
        return self.cache_hit_tokens / q if q else math.nan


class _Seq:
    """The engine's private state of one request (its view is what the policy sees)."""

    __slots__ = ("computed", "held", "index", "ready_s", "swapped", "target", "times", "view")

    def __init__(self, index: int, view: RequestView, target: int) -> None:
        self.index = index
        self.view = view
        self.target = target  # output tokens to produce
        self.held = 0  # KV blocks held on the device
        self.computed = 0  # context tokens whose KV is computed
        self.ready_s = -math.inf  # offload: its KV is back on the device from then on
        self.swapped = False  # its KV is on the host (swap preemption)
        self.times: list[float] = []

    @property
    def context(self) -> int:
        """Tokens its next token depends on: prompt and the output so far."""
        v = self.view
        return v.prompt_tokens + v.output_tokens


@dataclass(slots=True)
class _Batch:
    """One step's work: (sequence, tokens it computes) in the order they were scheduled."""

    work: list[tuple[_Seq, int]] = field(default_factory=list)
    swap_s: float = 0.0  # synchronous swap time (swap preemption)


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
        offload = self.config.preemption == "offload"
        self._mean_context_tokens = 1.0  # of the running batch; read by capacity.token_latency_s
        self.capacity = Capacity(
            kv_blocks=profile.kv_capacity_blocks,
            block_size=bs,
            max_batch=profile.max_batch,
            token_budget=self.config.chunked_prefill_tokens,
            token_latency_s=self._token_latency_s,
            prefill_latency_s=profile.prefill_s,
            offload_s_per_token=profile.swap_s_per_block / bs if offload else None,
        )

    def _token_latency_s(self, batch: int) -> float:
        # The policy asks "how long is a step with this many requests?"; the context each request
        # brings is taken as the running batch's current mean.
        return self.profile.decode_s(batch, int(batch * self._mean_context_tokens))

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> SimResult:
        """Simulate until every request has produced its output; returns the per-request record."""
        from tqdm import tqdm

        wall0 = time.perf_counter()
        n = len(self.workload)
        self._order = sorted(range(n), key=lambda i: self.arrivals_s[i])  # stable: ties keep order
        self._next_arrival = 0
        self._results: list[RequestResult | None] = [None] * n
        self._live: dict[str, _Seq] = {}
        self._parked: set[str] = set()  # live requests in state PREEMPTED
        self._snapshot = Snapshot()
        host = self.config.host_kv_blocks
        self._kv = KVCache(
            self.profile.kv_capacity_blocks,
            self.profile.block_size,
            (1 << 62 if host is None else host) if self.config.preemption == "offload" else 0,
        )
        self._finished = 0
        self._recomputed = 0
        self._policy_wall = 0.0
        self.now = self.arrivals_s[self._order[0]] if n else 0.0
        stats = {"iterations": 0, "busy_s": 0.0, "peak": 0}
        idle_since: float | None = None
        bar = tqdm(total=n, disable=not self.config.progress, unit="req", leave=False,
                   mininterval=0.5)  # fmt: skip

        while self._finished < n:
            self._admit_arrivals()
            if not self._live:
                self.now = self.arrivals_s[self._order[self._next_arrival]]
                continue
            plan = self._schedule()
            batch = self._apply(plan)
            stats["peak"] = max(stats["peak"], self._kv.used)
            if not batch.work:
                idle_since = self._idle(idle_since, batch.swap_s)
                stats["busy_s"] += batch.swap_s
                continue
            idle_since = None
            dt = self._execute(batch)
            stats["iterations"] += 1
            stats["busy_s"] += dt
            bar.update(self._postprocess(batch))
        bar.close()

        assert all(r is not None for r in self._results)
        kv = self._kv
        return SimResult(
            policy=self.policy.name,
            profile=self.profile.name,
            requests=[r for r in self._results if r is not None],
            iterations=stats["iterations"],
            peak_kv_blocks=stats["peak"],
            kv_capacity_blocks=self.profile.kv_capacity_blocks,
            busy_s=stats["busy_s"],
            wall_s=time.perf_counter() - wall0,
            policy_wall_s=self._policy_wall,
            recomputed_tokens=self._recomputed,
            cache_queried_tokens=kv.queried_tokens,
            cache_hit_tokens=kv.hit_tokens + kv.loaded_tokens,
        )

    # -- 1. admit arrivals ------------------------------------------------------------------------

    def _admit_arrivals(self) -> None:
        order, n = self._order, len(self._order)
        while self._next_arrival < n and self.arrivals_s[order[self._next_arrival]] <= self.now:
            i = order[self._next_arrival]
            req = self.workload[i]
            view = RequestView(
                req_id=req.req_id,
                arrival_s=self.arrivals_s[i],
                spec=req.spec,
                state=ReqState.WAITING,
                prompt_tokens=req.prompt_tokens,
                output_tokens=0,
                kv_blocks=self._blocks(req.prompt_tokens),
                tracker=QoETracker(req.spec, self.arrivals_s[i]),
            )
            if req.req_id in self._live:
                raise SimulationError(f"two live requests share the id {req.req_id!r}")
            self._live[req.req_id] = _Seq(i, view, req.output_tokens)
            self._snapshot.add(view)
            self._next_arrival += 1

    # -- 2. schedule ------------------------------------------------------------------------------

    def _schedule(self) -> StepPlan:
        snap, now = self._snapshot, self.now
        if self.slack_fn is not None:
            for s in self._live.values():
                report = self.slack_fn(s.view, now)
                if report is not s.view.slack:
                    s.view.slack = report
                    snap.touch(s.view.req_id)
        self._refresh_cached()
        t0 = time.perf_counter()
        decision = self.policy.schedule(now, snap, self.capacity)
        self._policy_wall += time.perf_counter() - t0
        states = {rid: s.view.state for rid, s in self._live.items()}
        max_batch = self.profile.max_batch
        if decision is None:
            return fcfs_plan(states, {rid: s.view.arrival_s for rid, s in self._live.items()},
                             max_batch)  # fmt: skip
        try:
            return plan_step(decision, states, max_batch)
        except UnknownRequest as exc:
            raise SimulationError(f"policy {self.policy.name!r}: {exc}") from None

    def _refresh_cached(self) -> None:
        """Tell the policy what a readmission of each parked request would not recompute."""
        if not self.config.prefix_caching and self.config.preemption != "offload":
            return
        for rid in self._parked:
            s = self._live[rid]
            v = s.view
            if not s.swapped:
                hit, loaded = self._kv.cached_tokens(rid, s.context)
                cached = loaded + (hit if self.config.prefix_caching else 0)
                if cached != v.cached_tokens:
                    v.cached_tokens = cached
                    self._snapshot.touch(rid)

    # -- 3. apply the decision --------------------------------------------------------------------

    def _apply(self, plan: StepPlan) -> _Batch:
        batch = _Batch()
        live = self._live
        for rid in plan.preempt:
            batch.swap_s += self._preempt(live[rid])
        for rid in plan.hold:
            self._set_state(live[rid], ReqState.HELD)
        chunk = self.config.chunked_prefill_tokens
        budget = math.inf if chunk is None else chunk
        running = [live[rid] for rid in plan.running]
        for s in running:  # running, scheduled this step or not (vLLM's ``self.running``)
            self._set_state(s, ReqState.RUNNING)
        overflow = False
        i = 0
        while i < len(running) and budget > 0:
            s = running[i]
            if s.ready_s > self.now:  # offload: still loading its KV
                i += 1
                continue
            tokens = min(max(s.context - s.computed, 1), budget)
            need = self._blocks(s.computed + tokens) - s.held
            while need > self._kv.free:
                victim = running.pop()  # the engine's own victim: the end of the order
                batch.swap_s += self._preempt(victim)
                overflow = True
                if victim is s:
                    break
            if s.view.state is not ReqState.RUNNING:
                break
            self._grow(s, need)
            batch.work.append((s, tokens))
            budget -= tokens
            i += 1
        if not overflow:
            batch.swap_s += self._admit(plan.admit, batch, budget, len(running))
        return batch

    def _admit(self, admit: list[str], batch: _Batch, budget: float, running: int) -> float:
        """Admit in order while the batch limit, the token budget and KV allow; swap seconds."""
        swap_s = 0.0
        chunked = self.config.chunked_prefill_tokens is not None
        for rid in admit:
            if running >= self.profile.max_batch or budget <= 0:
                break
            s = self._live[rid]
            context = s.context
            hit, loaded = (s.computed, 0) if s.swapped else self._kv.cached_tokens(rid, context)
            computed = hit + loaded
            tokens = context - computed
            if tokens > budget and not chunked:
                break
            tokens = min(tokens, budget)
            blocks = self._blocks(computed + tokens)
            if blocks > self._kv.free:
                break
            if s.swapped:
                self._kv.allocate(blocks)
                swap_s += self.profile.swap_s(blocks)
                s.swapped = False
            else:
                self._kv.readmit(rid, context, blocks)
            if s.view.preemptions:
                self._recomputed += context - computed
            s.held, s.computed = blocks, computed
            running += 1
            self._set_state(s, ReqState.RUNNING)
            if loaded:  # the host copy comes back beside the step, before it can run
                s.ready_s = self.now + self.capacity.resume_delay_s(loaded)
                continue
            batch.work.append((s, tokens))
            budget -= tokens
        return swap_s

    def _preempt(self, s: _Seq) -> float:
        """Free ``s``'s KV (a park); returns the synchronous swap seconds it costs."""
        v = s.view
        context = s.context
        swap_s = 0.0
        if self.config.preemption == "swap":  # every block to the host; computed stays
            swap_s = self.profile.swap_s(s.held)
            s.swapped = True
            self._kv.used -= s.held
        else:
            computed = min(s.computed, context)
            self._kv.release(v.req_id, s.held, computed, parked=self.config.prefix_caching)
            if self.config.preemption == "offload":
                self._kv.store_host(v.req_id, computed)
            s.computed = 0
        s.held = 0
        s.ready_s = -math.inf
        v.preemptions += 1
        self._set_state(s, ReqState.PREEMPTED)
        return swap_s

    def _grow(self, s: _Seq, blocks: int) -> None:
        if blocks > 0:
            self._kv.allocate(blocks)
            s.held += blocks
            s.view.kv_blocks = s.held
            self._snapshot.touch(s.view.req_id)

    def _set_state(self, s: _Seq, state: ReqState) -> None:
        v = s.view
        if v.state is state:
            return
        v.state = state
        if state is ReqState.PREEMPTED:
            self._parked.add(v.req_id)
        else:
            self._parked.discard(v.req_id)
        if state in ON_DEVICE:
            v.kv_blocks = s.held
            v.cached_tokens = 0
        else:
            v.kv_blocks = self._blocks(s.context)
        v.pending_tokens = max(s.context - s.computed - 1, 0) if state in ON_DEVICE else 0
        self._snapshot.touch(v.req_id)

    # -- 4. execute -------------------------------------------------------------------------------

    def _execute(self, batch: _Batch) -> float:
        """Advance the clock by the step's duration; returns it."""
        decode_seqs = context = prefill = 0
        for s, tokens in batch.work:
            if tokens == 1 and s.computed == s.context - 1:
                decode_seqs += 1
                context += s.context
            else:
                prefill += tokens
        self._mean_context_tokens = context / decode_seqs if decode_seqs else 1.0
        dt = self.profile.iteration_s(decode_seqs, context, prefill) + batch.swap_s
        self.now += dt
        return dt

    def _idle(self, idle_since: float | None, swap_s: float) -> float:
        """Nothing ran this step: move the clock to the next thing that can change that."""
        self.now += swap_s
        if idle_since is None:
            idle_since = self.now
        elif self.now - idle_since > self.config.stall_limit_s and self._next_arrival >= len(
            self._order
        ):
            raise SimulationError(
                f"policy {self.policy.name!r} ran nothing for {self.config.stall_limit_s:g}"
                f" virtual seconds with {len(self._live)} requests waiting"
            )
        nxt = (
            self.arrivals_s[self._order[self._next_arrival]]
            if self._next_arrival < len(self._order)
            else math.inf
        )
        loading = min((s.ready_s for s in self._live.values() if s.ready_s > self.now),
                      default=math.inf)  # fmt: skip
        self.now = max(self.now, min(nxt, loading, self.now + self.config.idle_tick_s))
        return idle_since

    # -- 5. postprocess ---------------------------------------------------------------------------

    def _postprocess(self, batch: _Batch) -> int:
        """Deliver the tokens of the step that just ran; returns how many requests finished."""
        now, snap = self.now, self._snapshot
        done = 0
        for s, tokens in batch.work:
            s.computed += tokens
            v = s.view
            if s.computed < s.context:
                v.pending_tokens = s.context - s.computed - 1
                snap.touch(v.req_id)
                continue
            v.output_tokens += 1
            v.pending_tokens = 0
            s.times.append(now)
            snap.deliver(v.req_id, now, 1)
            if v.output_tokens >= s.target:
                self._finish(s)
                done += 1
        self._finished += done
        return done

    def _finish(self, s: _Seq) -> None:
        v = s.view
        self._kv.release(v.req_id, s.held, s.computed, parked=False)
        s.held = 0
        del self._live[v.req_id]
        self._snapshot.remove(v.req_id)
        self._results[s.index] = RequestResult(
            req_id=v.req_id,
            arrival_s=v.arrival_s,
            prompt_tokens=v.prompt_tokens,
            output_tokens=v.output_tokens,
            spec=v.spec,
            token_times_s=s.times,
            preemptions=v.preemptions,
            qoe=v.tracker.qoe(),
        )

    def _blocks(self, tokens: int) -> int:
        return max(1, -(-tokens // self.profile.block_size))


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
