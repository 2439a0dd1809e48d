"""``AndesScheduler``: vLLM's v1 scheduler with an Andes policy deciding who runs.

Load it with ``--scheduler-cls engine.vllm.scheduler.AndesScheduler`` (``AndesAsyncScheduler``
where vLLM schedules asynchronously, i.e. on GPUs). vLLM constructs it inside its engine-core
process; its settings come from ``ANDES_*`` environment variables (:mod:`engine.vllm.settings`).

Each step, before vLLM forms its batch (``schedule``), the scheduler

1. snapshots every running request and every admittable waiting request (status ``WAITING`` or
   ``PREEMPTED``) as a :class:`~engine.policy.RequestView` — one object per request, reused between
   steps, whose tracker is fed the tokens each step delivered (``update_from_output``);
2. asks the policy for a :class:`~engine.policy.Decision`;
3. applies it with vLLM's own machinery: running requests left out of ``Decision.run`` are
   preempted (``_preempt_request``: KV blocks freed, recomputed on resume, with prefix-cache hits);
   ``self.running`` is reordered to the policy's priority, so vLLM's own memory-pressure victim
   (``running[-1]``) is the policy's least valued request; the waiting queue is reordered to the
   admit order and the waiting requests the policy did not list are *held* — taken out of the queue
   for this one ``super().schedule()`` call and put back right after, so aborts and stats still see
   them between steps.

vLLM keeps every invariant it owns: tokens are only ever produced by its model runner and appended
by its ``update_from_output``; preemption goes through its own path (async in-flight output is
marked stale and still delivered in order); finished and aborted requests are freed by vLLM, and
dropped from our state in ``update_from_output`` / ``finish_requests``. Anything else in the
waiting queue (requests waiting for a grammar, remote KV, streaming input) is left to vLLM.

Per-request QoE comes from the OpenAI request's ``vllm_xargs`` (→ ``SamplingParams.extra_args``):

* ``andes_ttft`` — expected time to first token, seconds (default ``ANDES_DEFAULT_TTFT_S``);
* ``andes_tds`` — the reader's pace, tokens per second (default ``ANDES_DEFAULT_TDS``);
* ``andes_stream_id`` — the gateway's stream id, the key of measured slack reports (vLLM's
  internal request ids carry a random suffix, so the gateway's own id must travel this way).

Measured slack: with ``ANDES_SLACK_PORT`` set (``andes engine --slack-port``), the scheduler runs
the slack channel's receiver itself (:mod:`slack.receiver`: a WebSocket server in a thread of this
process, base port + data-parallel rank, advertised for gateways by :mod:`slack.discovery`); each
step reads the fresh reports of its requests by stream id. Reports older than
``ANDES_SLACK_STALE_S`` are ignored.

Decision trace: with ``ANDES_DECISION_LOG`` set to a file path, every step appends one JSON
line: time, running / waiting / held counts, free KV blocks, and what the step ran (its number,
requests, those decoding, tokens, the context tokens it reads, and every preemption in it — the
policy's parks and any vLLM made itself under memory pressure). A step the policy was asked
about adds its decision: what bound, the batch size chosen, the parks (how many were for the
running set's own growth, and the recompute they were priced at) and the plug-in's own time
that step (snapshot, decision and carrying it out: ``policy_ms`` wall, ``policy_cpu_ms`` the
CPU time of the scheduling thread); one it was not asked about
says ``"asked": false``. To see, on a real load, which limit binds and what each decision cost;
:class:`StepTraceScheduler` writes the same step fields for stock vLLM. Off by default (no cost).

If the policy raises, the error is logged and that step runs with vLLM's own decision — a policy
bug must not take the engine and every stream on it down.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutputs
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from core.qoe import QoESpec, QoETracker
from engine.policy.base import Capacity, Policy, ReqState, RequestView
from engine.policy.plan import StepPlan, UnknownRequest, fcfs_plan, plan_step
from engine.policy.snapshot import Snapshot
from engine.vllm.settings import SchedulerSettings, load_policy
from engine.vllm.step_latency import StepLatencyModel
from engine.vllm.version import SUPPORTED_VLLM, VERIFIED_VLLM, check_vllm_version
from slack.receiver import SlackServer, start_for_engine

__all__ = [
    "SUPPORTED_VLLM",
    "VERIFIED_VLLM",
    "AndesAsyncScheduler",
    "AndesAutoScheduler",
    "AndesScheduler",
    "AndesSchedulerMixin",
    "StepTraceAsyncScheduler",
    "StepTraceAutoScheduler",
    "StepTraceScheduler",
    "check_vllm_version",
    "load_policy",
]

logger = logging.getLogger(__name__)

EXTRA_TTFT = "andes_ttft"
EXTRA_TDS = "andes_tds"
EXTRA_STREAM_ID = "andes_stream_id"

_ADMITTABLE = (RequestStatus.WAITING, RequestStatus.PREEMPTED)


class AndesSchedulerMixin:
    """The Andes logic, shared by the synchronous and asynchronous vLLM schedulers.

    Mixed in *before* the vLLM class so ``super()`` reaches vLLM's methods.
    """

    # Set by _andes_init; the attributes below it come from vLLM's Scheduler.
    clock: Callable[[], float]
    settings: SchedulerSettings
    andes_policy: Policy
    step_latency: StepLatencyModel
    _snapshot: Snapshot
    _stream_ids: dict[str, str]
    _held: set[str]
    _step_marks: dict[int, tuple[float, int, int]]
    _last_output_s: float
    _policy_failures: int
    _max_tds: float
    slack_server: SlackServer | None
    _decision_log: Any
    _pending_trace: dict[str, Any] | None
    _steps: int

    running: list[Request]
    waiting: Any
    requests: dict[str, Request]
    block_size: int

    def _andes_init(self) -> None:
        check_vllm_version()
        if self.policy != SchedulingPolicy.FCFS:  # type: ignore[attr-defined]
            raise ValueError(
                f"AndesScheduler orders the queue itself; start vLLM with the default "
                f"--scheduling-policy fcfs, not {self.policy.value!r}"  # type: ignore[attr-defined]
            )
        if not isinstance(self.waiting, deque):
            raise TypeError(
                f"expected vLLM's FCFS deque as the waiting queue, got {type(self.waiting)!r}"
            )
        self.settings = SchedulerSettings.from_env(os.environ)
        self.andes_policy = load_policy(self.settings)
        # Wall clock: vLLM stamps Request.arrival_time with time.time() in the API process.
        self.clock = time.time
        self.step_latency = StepLatencyModel(
            self.settings.token_latency_s, self.settings.prefill_s_per_token
        )
        self._snapshot = Snapshot()  # every live request the policy knows, with a change log
        self._stream_ids = {}
        self._held = set()  # running requests the policy held out of the last step
        self._step_marks = {}  # id(SchedulerOutput) -> (scheduled at, decode seqs, prefill tokens)
        self._last_output_s = -math.inf
        self._policy_failures = 0
        self._max_tds = 0.0  # the fastest declared reader seen (for the quick latency check)
        trace_path = os.environ.get("ANDES_DECISION_LOG")
        self._decision_log = open(trace_path, "a", buffering=1) if trace_path else None  # noqa: SIM115
        self._pending_trace = None
        self._steps = 0  # schedule() calls: the trace's step numbers (gaps: steps not traced)
        # The slack channel's receiver (slack/receiver.py): a WebSocket server in a thread of
        # this engine-core process, when ANDES_SLACK_PORT is set. One per data-parallel rank.
        dp_rank = getattr(getattr(self, "parallel_config", None), "data_parallel_rank", 0) or 0
        self.slack_server = start_for_engine(
            os.environ, dp_rank, sys.argv, clock=lambda: self.clock()  # reports on our clock
        )
        logger.info("Andes scheduler: policy %r, %s", self.settings.policy, self.settings)

    # -- vLLM's scheduler interface ---------------------------------------------------------------

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        now_s = self.clock()
        self._steps += 1
        held_running: list[Request] = []
        held_waiting: list[Request] = []
        if self._has_decision_to_make():
            t0, cpu0 = time.perf_counter(), time.thread_time()
            held_running, held_waiting = self._apply_policy(now_s)
            if self._pending_trace is not None:  # what the plug-in's own work took this step:
                # wall time, and the CPU time of this thread (the difference is time it waited:
                # for the GIL, held by the engine's output thread, or for a core)
                self._pending_trace["policy_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
                self._pending_trace["policy_cpu_ms"] = round((time.thread_time() - cpu0) * 1e3, 3)
        elif self._decision_log is not None:
            # Traced too (what the engine ran), so a trace sums to the whole load, as a stock
            # engine's does (StepTraceScheduler).
            self._pending_trace = queue_fields(self, now_s, len(self.waiting))
            self._pending_trace.update(held=len(self._held), asked=False)
        try:
            output: SchedulerOutput = super().schedule(*args, **kwargs)  # type: ignore[misc]
        finally:
            # Back between steps, so finish_requests (aborts) and the stats see them; their
            # place does not matter, the next step orders both queues again.
            self.running.extend(held_running)
            self.waiting.extend(held_waiting)
        self._mark_step(output, now_s)
        if self._pending_trace is not None:
            self._write_trace(output)
        return output

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput
    ) -> dict[int, EngineCoreOutputs]:
        outputs: dict[int, EngineCoreOutputs] = super().update_from_output(  # type: ignore[misc]
            scheduler_output, model_runner_output
        )
        now_s = self.clock()
        self._observe_step(scheduler_output, now_s)
        snap = self._snapshot
        for engine_outputs in outputs.values():
            for out in engine_outputs.outputs:
                req_id = out.request_id
                if req_id not in snap:
                    continue
                if out.new_token_ids:
                    snap.deliver(req_id, now_s, len(out.new_token_ids))
                    view = snap.get(req_id)
                    request = self.requests.get(req_id)
                    if view is not None and request is not None:
                        # Counted with the delivery: the next sync sees nothing new to read.
                        view.output_tokens = request.num_output_tokens
                if out.finish_reason is not None:
                    self._forget(req_id)
        return outputs

    def add_request(self, request: Request) -> None:
        super().add_request(request)  # type: ignore[misc]
        self._new_view(request)

    def finish_requests(
        self, request_ids: str | Iterable[str] | None, finished_status: RequestStatus
    ) -> list[Request]:
        finished: list[Request] = super().finish_requests(  # type: ignore[misc]
            request_ids, finished_status
        )
        for request in finished:
            self._forget(request.request_id)
        return finished

    # -- the policy step ---------------------------------------------------------------------------

    def _has_decision_to_make(self) -> bool:
        """Whether this step needs the policy at all (a few comparisons, no view is read).

        Nothing waits to be admitted, nothing is held, the cache has a block for every running
        request's growth, and the batch keeps up with its fastest reader: then a policy that
        says it has nothing to decide in that case (``Policy.idle_when_unbound``, as ``andes``)
        is not called, vLLM's own step is the policy's, and Andes costs nothing.
        """
        if not self.andes_policy.idle_when_unbound:
            return True
        if self._held or len(self.running) > self.max_num_running_reqs:  # type: ignore[attr-defined]
            return True
        if any(r.status in _ADMITTABLE for r in self.waiting):
            return True
        pool = self.kv_cache_manager.block_pool  # type: ignore[attr-defined]
        if pool.get_num_free_blocks() < len(self.running):
            return True
        tds = self._max_tds
        return tds > 0 and self.step_latency.token_latency_s(len(self.running)) > 1.0 / tds

    def _apply_policy(self, now_s: float) -> tuple[list[Request], list[Request]]:
        """Run the policy and carry its decision out; return the running and waiting requests
        held out of this step (the caller puts them back after vLLM's step)."""
        snap = self._snapshot
        if len(snap) > len(self.requests):  # belt and braces: never leak a view
            for req_id in [v.req_id for v in snap if v.req_id not in self.requests]:
                self._forget(req_id)
        admittable: list[Request] = []
        unmanaged: list[Request] = []
        for request in self.waiting:
            (admittable if request.status in _ADMITTABLE else unmanaged).append(request)
        for request in self.running:
            self._sync_view(request, now_s)
        snap_get = snap.get
        for request in admittable:
            view = snap_get(request.request_id)
            if (view is not None and view.state is ReqState.WAITING
                    and not request.num_output_tokens and not request.num_preemptions):
                continue  # never run: nothing about it changes while it waits (reports before
                # the first token say nothing either: guards.py)
            self._sync_view(request, now_s)
        try:
            decision = self.andes_policy.schedule(now_s, snap, self._capacity())
        except Exception:
            self._policy_failures += 1
            if self._policy_failures <= 3 or self._policy_failures % 1000 == 0:
                logger.exception(
                    "policy %r failed (%d times so far) on %d running / %d waiting requests; "
                    "this step uses vLLM's own order",
                    self.settings.policy,
                    self._policy_failures,
                    len(self.running),
                    len(admittable),
                )
            decision = None
        if self._decision_log is not None:
            self._pending_trace = self._trace(now_s, decision, len(admittable))
        states = {v.req_id: v.state for v in snap}
        max_batch = self.max_num_running_reqs  # type: ignore[attr-defined]
        if decision is None:
            arrival = {v.req_id: v.arrival_s for v in snap}
            plan = fcfs_plan(states, arrival, max_batch)
        else:
            try:
                plan = plan_step(decision, states, max_batch)
            except UnknownRequest as exc:
                logger.warning("policy %r: %s; this step uses vLLM's own order",
                               self.settings.policy, exc)  # fmt: skip
                plan = fcfs_plan(states, {v.req_id: v.arrival_s for v in snap}, max_batch)
        return self._carry_out(plan, admittable, unmanaged)

    def _carry_out(
        self, plan: StepPlan, admittable: list[Request], unmanaged: list[Request]
    ) -> tuple[list[Request], list[Request]]:
        """The plan with vLLM's own machinery (engine/policy/plan.py gives the order of work)."""
        by_id = self.requests
        preempted: list[Request] = []
        if plan.preempt:
            stamp = time.monotonic()  # vLLM's event clock
            can_free = getattr(self, "_request_blocks_can_be_freed", None)
            drop_stale = bool(getattr(self, "requires_kv_delivery", False))
            for req_id in plan.preempt:
                request = by_id.get(req_id)
                if request is None or request.status != RequestStatus.RUNNING:
                    continue
                if can_free is not None and not can_free(request):
                    continue  # a deferred free would not give the memory back now
                self.running.remove(request)
                if drop_stale:  # as vLLM does for connectors that need KV delivery
                    self._preempt_request(request, stamp, drop_stale_output=True)  # type: ignore[attr-defined]
                else:
                    self._preempt_request(request, stamp)  # type: ignore[attr-defined]
                preempted.append(request)
        # Running: the plan's order (vLLM's own memory-pressure victim is running[-1]); held
        # requests sit this step out with their KV.
        rank = {req_id: i for i, req_id in enumerate(plan.running)}
        keep = [r for r in self.running if r.request_id in rank]
        keep.sort(key=lambda r: rank[r.request_id])
        held_running = [r for r in self.running if r.request_id not in rank]
        self.running[:] = keep
        self._held = {r.request_id for r in held_running}
        # Waiting: the plan's admissions in order; the rest wait outside the queue this step.
        order = {req_id: i for i, req_id in enumerate(plan.admit)}
        admit = sorted((r for r in admittable if r.request_id in order),
                       key=lambda r: order[r.request_id])  # fmt: skip
        held_waiting = [r for r in admittable if r.request_id not in order]
        held_waiting += [r for r in preempted if r.request_id not in order]
        self.waiting.clear()
        self.waiting.extend(admit)
        self.waiting.extend(unmanaged)
        return held_running, held_waiting

    def _sync_view(self, request: Request, now_s: float) -> None:
        """Bring ``request``'s view up to date (touching it in the snapshot if it changed)."""
        req_id = request.request_id
        view = self._snapshot.get(req_id)
        if view is None:
            view = self._new_view(request)
        bs = self.block_size
        if request.status == RequestStatus.RUNNING:
            state = ReqState.HELD if req_id in self._held else ReqState.RUNNING
            blocks = -(-request.num_computed_tokens // bs)
            pending = max(request.num_tokens - request.num_computed_tokens - 1, 0)
            cached = 0
        else:
            preempted = request.status == RequestStatus.PREEMPTED or request.num_preemptions
            state = ReqState.PREEMPTED if preempted else ReqState.WAITING
            blocks = -(-request.num_tokens // bs)
            pending = 0
            cached = self._cached_tokens(request) if preempted else 0
        server = self.slack_server
        report = (
            server.fresh(self._stream_ids[req_id], now_s, self.settings.slack_stale_s)
            if server is not None
            else None
        )
        fields = (state, blocks, pending, cached, request.num_output_tokens,
                  request.num_preemptions, report)  # fmt: skip
        if fields != (view.state, view.kv_blocks, view.pending_tokens, view.cached_tokens,
                      view.output_tokens, view.preemptions, view.slack):  # fmt: skip
            view.state, view.kv_blocks, view.pending_tokens, view.cached_tokens = fields[:4]
            view.output_tokens, view.preemptions, view.slack = fields[4:]
            self._snapshot.touch(req_id)

    def _cached_tokens(self, request: Request) -> int:
        """Tokens of a parked request the prefix cache still holds (a readmission skips them)."""
        manager = self.kv_cache_manager  # type: ignore[attr-defined]
        try:
            if not manager.prefix_cache_lookup_enabled(request):
                return 0
            _, hit, *_ = manager.coordinator.find_longest_cache_hit(
                request.block_hashes, request.num_tokens - 1
            )
        except (AttributeError, TypeError):  # another vLLM version's internals: assume none
            return 0
        return int(hit)

    def _new_view(self, request: Request) -> RequestView:
        known = self._snapshot.get(request.request_id)
        if known is not None:  # a streaming-input session adds its request again
            return known
        extra = (request.sampling_params.extra_args if request.sampling_params else None) or {}
        spec = self._spec(request.request_id, extra)
        stream_id = extra.get(EXTRA_STREAM_ID)
        view = RequestView(
            req_id=request.request_id,
            arrival_s=request.arrival_time,
            spec=spec,
            state=ReqState.WAITING,
            prompt_tokens=request.num_prompt_tokens,
            output_tokens=0,
            kv_blocks=-(-request.num_tokens // self.block_size),
            tracker=QoETracker(spec, request.arrival_time),
            max_output_tokens=request.max_tokens,
        )
        if request.num_output_tokens:  # first seen mid-stream: count what it already has
            view.tracker.add(request.arrival_time, request.num_output_tokens)
            view.output_tokens = request.num_output_tokens
        self._snapshot.add(view)
        self._max_tds = max(self._max_tds, spec.tds_tok_s)
        self._stream_ids[request.request_id] = (
            str(stream_id) if stream_id is not None else request.request_id
        )
        if stream_id is not None and self.slack_server is not None:
            self.slack_server.register(str(stream_id))  # reports for it are accepted from now on
        return view

    def _spec(self, req_id: str, extra: dict[str, Any]) -> QoESpec:
        ttft = extra.get(EXTRA_TTFT, self.settings.default_ttft_s)
        tds = extra.get(EXTRA_TDS, self.settings.default_tds_tok_s)
        try:
            return QoESpec(ttft_s=float(ttft), tds_tok_s=float(tds))
        except (TypeError, ValueError) as exc:
            # A client's bad value must not stop the engine: serve it with the defaults.
            logger.warning("request %s: bad QoE (%s); using the defaults", req_id, exc)
            return QoESpec(self.settings.default_ttft_s, self.settings.default_tds_tok_s)

    def _capacity(self) -> Capacity:
        pool = self.kv_cache_manager.block_pool  # type: ignore[attr-defined]
        usable = pool.num_gpu_blocks - 1  # block 0 is vLLM's null block
        watermark = getattr(self.scheduler_config, "watermark", 0.0) or 0.0  # type: ignore[attr-defined]
        max_batch = getattr(self, "max_num_active_reqs", None) or self.max_num_running_reqs  # type: ignore[attr-defined]
        config = self.scheduler_config  # type: ignore[attr-defined]
        chunked = getattr(config, "enable_chunked_prefill", False)
        latency = self.step_latency
        return Capacity(
            kv_blocks=int(usable * (1.0 - watermark)),
            block_size=self.block_size,
            max_batch=max_batch,
            token_budget=self.max_num_scheduled_tokens if chunked else None,  # type: ignore[attr-defined]
            token_latency_s=latency.token_latency_s,
            prefill_latency_s=latency.prefill_latency_s,
            offload_s_per_token=self._offload_s_per_token(),
        )

    def _offload_s_per_token(self) -> float | None:
        """With vLLM's KV offloading on (the OffloadingConnector), parked KV comes back from
        host memory; ANDES_OFFLOAD_S_PER_TOKEN prices the copy (seconds per token)."""
        connector = getattr(self, "connector", None)
        if connector is None or "Offloading" not in type(connector).__name__:
            return None
        return self.settings.offload_s_per_token

    def _trace(self, now_s: float, decision: Any, waiting: int) -> dict[str, Any]:
        last = getattr(self.andes_policy, "last", None)
        return {
            **queue_fields(self, now_s, waiting), "held": len(self._held),
            "binds": list(getattr(last, "binds", ())), "batch": getattr(last, "batch", None),
            "reused": getattr(last, "reused", None),
            "run": None if decision is None else len(decision.run),
            "park": 0 if decision is None else len(decision.preempt),
            "park_s": round(getattr(last, "parked_s", 0.0), 4),  # their recompute, as priced
            "relieved": getattr(last, "notes", {}).get("relieved", 0),  # of them, for growth
        }  # fmt: skip

    def _write_trace(self, output: SchedulerOutput) -> None:
        trace, self._pending_trace = self._pending_trace, None
        assert trace is not None
        trace.update(step_fields(self.requests, output, self._steps))
        self._decision_log.write(json.dumps(trace) + "\n")

    def _forget(self, req_id: str) -> None:
        self._snapshot.remove(req_id)
        self._held.discard(req_id)
        stream_id = self._stream_ids.pop(req_id, None)
        if stream_id is not None and self.slack_server is not None:
            self.slack_server.unregister(stream_id)

    def shutdown(self) -> None:
        if self.slack_server is not None:
            self.slack_server.stop()
        if self._decision_log is not None:
            self._decision_log.close()
        super().shutdown()  # type: ignore[misc]

    # -- step timing, for the latency model ------------------------------------------------------

    def _mark_step(self, output: SchedulerOutput, now_s: float) -> None:
        scheduled = output.num_scheduled_tokens
        if not scheduled:
            return
        decode = sum(1 for n in scheduled.values() if n == 1)
        prefill = output.total_num_scheduled_tokens - decode
        self._step_marks[id(output)] = (now_s, decode, prefill)

    def _observe_step(self, output: SchedulerOutput, now_s: float) -> None:
        mark = self._step_marks.pop(id(output), None)
        if mark is None:
            return
        scheduled_s, decode, prefill = mark
        # Sync: the step ran from its scheduling to now. Async: steps overlap, so the time since
        # the previous step's output is the step's share.
        self.step_latency.observe(now_s - max(scheduled_s, self._last_output_s), decode, prefill)
        self._last_output_s = now_s


class AndesScheduler(AndesSchedulerMixin, Scheduler):
    """vLLM's synchronous scheduler under an Andes policy (CPU; GPUs with async scheduling off)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._andes_init()


class AndesAsyncScheduler(AndesSchedulerMixin, AsyncScheduler):
    """vLLM's asynchronous scheduler (the default on GPUs, vLLM ≥ 0.15) under an Andes policy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._andes_init()


class AndesAutoScheduler:
    """``--scheduler-cls engine.vllm.scheduler.AndesAutoScheduler``: whichever of the two vLLM
    itself would run — :class:`AndesAsyncScheduler` where it schedules asynchronously (GPU
    builds, unless a feature turned it off), :class:`AndesScheduler` otherwise. vLLM documents
    that plug-ins must extend its ``AsyncScheduler`` where async scheduling is on (a plain
    ``Scheduler`` subclass turns the overlap off); this follows vLLM's own resolved setting
    instead of guessing it from the platform. What ``andes engine`` passes."""

    def __new__(cls, *args: Any, **kwargs: Any) -> AndesScheduler:  # type: ignore[misc]
        use_async = _async_scheduling(args, kwargs)
        chosen = AndesAsyncScheduler if use_async else AndesScheduler
        mode = "asynchronously" if use_async else "synchronously"
        logger.info("Andes scheduler: vLLM schedules %s; using %s", mode, chosen.__name__)
        return chosen(*args, **kwargs)  # type: ignore[return-value]


def queue_fields(scheduler: Any, now_s: float, waiting: int) -> dict[str, Any]:
    """Where the engine stood as a step began, for the trace: the time, the running and waiting
    requests, the free KV blocks."""
    pool = scheduler.kv_cache_manager.block_pool
    return {"t": round(now_s, 4), "running": len(scheduler.running), "waiting": waiting,
            "free_blocks": pool.get_num_free_blocks()}  # fmt: skip


def step_fields(
    requests: dict[str, Request], output: SchedulerOutput, step: int
) -> dict[str, int]:
    """What a step ran, for the trace: its number, every preemption in it (the policy's parks
    and any vLLM made itself), the requests scheduled and those decoding, its tokens, and the
    context it reads (what the simulator's latency model charges per KV token)."""
    scheduled = output.num_scheduled_tokens
    return {
        "preempted": len(output.preempted_req_ids or ()),
        "step": step,
        "scheduled": len(scheduled),
        "decode": sum(1 for n in scheduled.values() if n == 1),
        "tokens": output.total_num_scheduled_tokens,
        "context": sum(requests[r].num_computed_tokens for r in scheduled if r in requests),
    }


class _StepTraceMixin:
    """vLLM's own scheduling, untouched, with each step written to ``ANDES_DECISION_LOG`` as
    the Andes scheduler writes it (time, queue, free blocks and :func:`step_fields`): what a
    stock engine ran, step by step, to set beside an andes engine's trace
    (``benchmarks/engine_grid.py --trace-dir``). No policy, no reordering."""

    requests: dict[str, Request]
    running: list[Request]
    waiting: Any
    _step_log: Any
    _step_count: int

    def _trace_init(self) -> None:
        path = os.environ.get("ANDES_DECISION_LOG")
        self._step_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115
        self._step_count = 0

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        self._step_count += 1
        trace = None
        if self._step_log is not None:
            trace = queue_fields(self, time.time(), len(self.waiting))
        output: SchedulerOutput = super().schedule(*args, **kwargs)  # type: ignore[misc]
        if trace is not None:
            trace.update(step_fields(self.requests, output, self._step_count))
            self._step_log.write(json.dumps(trace) + "\n")
        return output

    def shutdown(self) -> None:
        if self._step_log is not None:
            self._step_log.close()
        super().shutdown()  # type: ignore[misc]


class StepTraceScheduler(_StepTraceMixin, Scheduler):
    """vLLM's synchronous scheduler, tracing its steps (:class:`_StepTraceMixin`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trace_init()


class StepTraceAsyncScheduler(_StepTraceMixin, AsyncScheduler):
    """vLLM's asynchronous scheduler, tracing its steps (:class:`_StepTraceMixin`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trace_init()


class StepTraceAutoScheduler:
    """``--scheduler-cls engine.vllm.scheduler.StepTraceAutoScheduler``: stock vLLM's scheduler
    (the one vLLM itself would run, as :class:`AndesAutoScheduler` picks) with its steps traced."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Scheduler:  # type: ignore[misc]
        chosen = StepTraceAsyncScheduler if _async_scheduling(args, kwargs) else StepTraceScheduler
        return chosen(*args, **kwargs)  # type: ignore[return-value]


def _async_scheduling(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether vLLM resolved its config (the scheduler's first argument) to schedule
    asynchronously."""
    config = kwargs.get("vllm_config", args[0] if args else None)
    return bool(getattr(getattr(config, "scheduler_config", None), "async_scheduling", False))
