"""The scheduling-policy contract shared by the simulator and the vLLM scheduler.

An adapter (``engine/sim`` or ``engine/vllm``) builds a snapshot of every live request each step
and asks a :class:`Policy` which requests should run. Policies are pure Python: no torch, vllm,
aiohttp or asyncio imports here or in any policy module.

When the adapter calls :meth:`Policy.schedule`: once per engine step, before the engine forms its
batch. The adapter then runs (or keeps running) the requests in ``Decision.run`` in that priority
order as far as memory and the batch limit allow, and preempts every running request not in it.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord

__all__ = [
    "Capacity",
    "Decision",
    "Policy",
    "ReqState",
    "RequestView",
    "step_blocks",
]


class ReqState(enum.Enum):
    WAITING = "waiting"  # never run yet (no KV blocks held)
    RUNNING = "running"  # in the batch, holds KV blocks
    PREEMPTED = "preempted"  # ran before, was preempted; resumes by recompute (or swap-in)


@dataclass(slots=True)
class RequestView:
    """One live request as a policy sees it. Adapters reuse these objects between steps."""

    req_id: str
    arrival_s: float  # when the request arrived, on the policy's clock
    spec: QoESpec
    state: ReqState
    prompt_tokens: int  # prompt length
    output_tokens: int  # tokens generated so far
    kv_blocks: int  # KV blocks it holds (running) or needs to (re)start (waiting/preempted)
    tracker: QoETracker  # delivery of its tokens, as the reader sees them (server-side inference)
    slack: SlackRecord | None = None  # latest measured report (t_s on the policy clock)
    max_output_tokens: int | None = None  # the request's max_tokens, if known (not its true length)
    preemptions: int = 0  # times it has been preempted so far


def step_blocks(view: RequestView, block_size: int) -> int:
    """KV blocks ``view`` must hold to take its next step (added for the policies; additive).

    A running request's next decode step writes the KV of its last generated token, so it needs
    room for ``prompt + output`` tokens; a waiting or preempted request (re)computes the same tokens
    in its prefill; vLLM v1's ``allocate_slots`` asks for exactly this (computed tokens + 1).
    Never less than what the adapter says it holds or needs (``kv_blocks``).
    """
    tokens = view.prompt_tokens + view.output_tokens
    return max(view.kv_blocks, -(-tokens // block_size), 1)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the engine can hold this step."""

    kv_blocks: int  # total KV-cache blocks (GPU)
    block_size: int  # tokens per KV block
    max_batch: int  # most requests running at once (vLLM's max_num_seqs)
    # Per-token (per-iteration) latency of a decode batch of the given size, seconds.
    token_latency_s: Callable[[int], float] = field(default=lambda batch: 0.05)
    # Seconds to (re)compute a prompt of the given length before its next token (prefill cost).
    prefill_latency_s: Callable[[int], float] = field(default=lambda tokens: 0.0)


@dataclass(slots=True)
class Decision:
    """The policy's answer for one step."""

    # Requests that should run, highest priority first. Running requests not listed are preempted;
    # waiting/preempted requests listed are admitted in this order as memory and batch allow.
    run: list[str] = field(default_factory=list)
    # Running requests to preempt, in the order they should go (a subset of those not in ``run``).
    preempt: list[str] = field(default_factory=list)


class Policy(ABC):
    """A scheduling policy, chosen by name (``get_policy("andes")``)."""

    name: ClassVar[str]

    @abstractmethod
    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        """Decide who runs this step. Must not mutate ``requests``."""
