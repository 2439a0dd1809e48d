"""The scheduling-policy contract shared by the simulator and the vLLM scheduler.

An adapter (``engine/sim`` or ``engine/vllm``) keeps a view of every live request and, once per
engine step, before the engine forms its batch, asks a :class:`Policy` who takes the step. Policies
are pure Python: no torch, vllm, aiohttp or asyncio imports here or in any policy module.

The levers a :class:`Decision` pulls, cheapest first (DESIGN.md, "The vLLM integration"):

* **order** — ``Decision.run`` lists who takes this step, highest priority first; the engine's own
  memory-pressure victim is the *last* running request of that order (vLLM pops ``running[-1]``);
* **hold** — a request whose KV is on the device and that is not in ``run`` (nor in ``preempt``)
  sits this step out and keeps its KV: nothing is recomputed when it comes back;
* **preempt** — ``Decision.preempt`` frees a request's KV (a *park*); resuming it recomputes what
  the prefix cache or the host offload no longer holds (:meth:`Capacity.park_cost_s`).

A policy may also answer ``None``: no decision to make, the engine runs its own order (vLLM's
FCFS). :func:`engine.policy.plan.plan_step` turns a decision into what the engine does, and both
adapters follow it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord

__all__ = [
    "ON_DEVICE",
    "Capacity",
    "Decision",
    "Policy",
    "ReqState",
    "RequestView",
    "step_blocks",
]


class ReqState(enum.Enum):
    """Where a request's KV is."""

    WAITING = "waiting"  # never run yet: no KV
    RUNNING = "running"  # KV on the device; took the last step (or was admitted to take this one)
    HELD = "held"  # KV on the device; a policy kept it out of the last step (resumes for free)
    PREEMPTED = "preempted"  # KV freed (parked); resumes by recompute, less what is still cached


ON_DEVICE = frozenset({ReqState.RUNNING, ReqState.HELD})
"""The states whose KV blocks are allocated on the device."""


@dataclass(slots=True)
class RequestView:
    """One live request as a policy sees it. Adapters reuse these objects between steps."""

    req_id: str
    arrival_s: float  # when the request arrived, on the policy's clock
    spec: QoESpec
    state: ReqState
    prompt_tokens: int  # prompt length
    output_tokens: int  # tokens generated so far
    kv_blocks: int  # KV blocks it holds (on device) or needs to (re)start (waiting/preempted)
    tracker: QoETracker  # delivery of its tokens, as the reader sees them (server-side inference)
    slack: SlackRecord | None = None  # latest measured report (t_s on the policy clock)
    max_output_tokens: int | None = None  # the request's max_tokens, if known (not its true length)
    preemptions: int = 0  # times it has been preempted so far
    # Tokens whose KV it gets back without computing them when (re)admitted (prefix-cache hit or
    # host offload; 0 when unknown). Waiting and preempted requests only.
    cached_tokens: int = 0
    # Tokens still to compute before its next token beyond a decode step's one: the rest of its
    # prompt (or, after a park, of its context) while chunked prefill spreads it over several
    # steps; 0 for a decoding request. On-device requests only.
    pending_tokens: int = 0


def step_blocks(view: RequestView, block_size: int) -> int:
    """KV blocks ``view`` must hold to take its next step.

    A running request's next decode step writes the KV of its last generated token, so it needs
    room for ``prompt + output`` tokens; a waiting or preempted request (re)computes the same tokens
    in its prefill; vLLM v1's ``allocate_slots`` asks for exactly this (computed tokens + 1).
    Never less than what the adapter says it holds or needs (``kv_blocks``).
    """
    tokens = view.prompt_tokens + view.output_tokens
    return max(view.kv_blocks, -(-tokens // block_size), 1)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the engine can hold and do this step: each limit, so a policy sees which one binds."""

    kv_blocks: int  # total KV-cache blocks (device)
    block_size: int  # tokens per KV block
    max_batch: int  # most requests in one step (vLLM's max_num_seqs)
    # Tokens one step may compute (vLLM's max_num_batched_tokens with chunked prefill: decodes
    # count one each, the rest goes to prefill chunks); None: every prefill runs whole.
    token_budget: int | None = None
    # Per-token (per-iteration) latency of a decode batch of the given size, seconds.
    token_latency_s: Callable[[int], float] = field(default=lambda batch: 0.05)
    # Seconds of engine time to (re)compute this many prompt tokens (prefill cost). Called with an
    # int or, by the fast path, a numpy array of counts (elementwise, the same arithmetic).
    prefill_latency_s: Callable[[Any], Any] = field(default=lambda tokens: 0.0 * tokens)
    # Host offload of parked KV (vLLM's OffloadingConnector on GPUs): seconds to move one token's
    # KV back to the device; None when parked KV is only kept by the prefix cache.
    offload_s_per_token: float | None = None

    def park_cost_s(self, tokens: int) -> float:
        """Engine seconds a park of a request holding ``tokens`` costs: its recompute on resume.

        With host offload the copy runs beside the model (vLLM stores blocks as they fill and
        loads them asynchronously), so a park costs the engine nothing; without, resuming
        recomputes the context, which the prefix cache rarely still holds when memory is short
        (the reason to park is to hand those blocks to someone else).
        """
        if self.offload_s_per_token is not None:
            return 0.0
        return self.prefill_latency_s(tokens)

    def resume_delay_s(self, tokens: Any, cached_tokens: Any = 0) -> Any:
        """Seconds from (re)admission to the next token of a request holding ``tokens`` (ints, or
        numpy arrays elementwise)."""
        if self.offload_s_per_token is not None:
            return self.offload_s_per_token * tokens + self.prefill_latency_s(1)
        missing = tokens - cached_tokens
        return self.prefill_latency_s(missing * (missing > 0))


@dataclass(slots=True)
class Decision:
    """A policy's answer for one step (see the module docstring for the levers)."""

    # Who takes this step, highest priority first: requests on the device, and waiting or
    # preempted ones to admit in this order as memory and the batch limit allow. An on-device
    # request left out of ``run`` and ``preempt`` is held (kept out of the step, KV kept).
    run: list[str] = field(default_factory=list)
    # On-device requests whose KV is freed, in the order they should go.
    preempt: list[str] = field(default_factory=list)


class Policy(ABC):
    """A scheduling policy, chosen by name (``get_policy("andes")``)."""

    name: ClassVar[str]
    # True if the policy answers None whenever nothing binds — no request waits, none is held,
    # the KV cache holds every running request's next step and the batch keeps up with its
    # fastest reader — so an adapter may skip the call (and the snapshot) on such steps.
    idle_when_unbound: ClassVar[bool] = False

    @abstractmethod
    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision | None:
        """Decide who takes this step; ``None`` leaves it to the engine's own order.

        ``requests`` is every live request (a :class:`~engine.policy.snapshot.Snapshot` when the
        adapter tracks what changed since the last call). Must not mutate it.
        """
