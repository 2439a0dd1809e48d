"""``fcfs`` — vLLM's default: first come, first served; preempt the newest under memory pressure.

Semantics (vLLM v1 ``Scheduler.schedule``, ``vllm/v1/core/sched/scheduler.py``):

* Running requests keep running, oldest arrival first. When their next step does not fit in the KV
  cache, the *newest* running request is preempted (vLLM pops ``running[-1]``) until the rest fit.
* Waiting and preempted requests are then admitted in arrival order while KV blocks and the batch
  limit allow. Admission stops at the first request that does not fit (head-of-line blocking, as in
  vLLM, which ``break``s out of its waiting loop) unless ``head_of_line_blocking=False``.
* A step that had to preempt admits nothing (vLLM skips the waiting queue once it preempted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.policy.base import (
    ON_DEVICE,
    Capacity,
    Decision,
    Policy,
    RequestView,
    step_blocks,
)
from engine.policy.registry import build_config, register_policy

__all__ = ["FCFSConfig", "FCFSPolicy", "fcfs_decision"]


@dataclass(frozen=True, slots=True)
class FCFSConfig:
    """Options of the ``fcfs`` policy."""

    # Stop admitting at the first waiting request that does not fit (vLLM's behaviour). When False,
    # later, smaller requests may be admitted past it.
    head_of_line_blocking: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.head_of_line_blocking, bool):
            raise ValueError(
                f"head_of_line_blocking must be a bool, got {self.head_of_line_blocking!r}"
            )


def fcfs_decision(
    requests: Sequence[RequestView], capacity: Capacity, head_of_line_blocking: bool = True
) -> Decision:
    """The FCFS decision for ``requests`` (shared with ``andes`` on its untriggered steps)."""
    bs = capacity.block_size
    running = sorted(
        (r for r in requests if r.state in ON_DEVICE), key=lambda r: (r.arrival_s, r.req_id)
    )
    need = [step_blocks(r, bs) for r in running]
    used = sum(need)
    keep = len(running)
    # Preempt from the newest end until the rest fit (memory and batch limit).
    while keep > 0 and (used > capacity.kv_blocks or keep > capacity.max_batch):
        keep -= 1
        used -= need[keep]
    run = [r.req_id for r in running[:keep]]
    preempt = [r.req_id for r in reversed(running[keep:])]  # newest first, the order vLLM uses
    if preempt:
        return Decision(run=run, preempt=preempt)

    free = capacity.kv_blocks - used
    slots = capacity.max_batch - keep
    if slots > 0:
        waiting = sorted(
            (r for r in requests if r.state not in ON_DEVICE),
            key=lambda r: (r.arrival_s, r.req_id),
        )
        for r in waiting:
            if slots == 0:
                break
            blocks = step_blocks(r, bs)
            if blocks > free:
                if head_of_line_blocking:
                    break
                continue
            run.append(r.req_id)
            free -= blocks
            slots -= 1
    return Decision(run=run, preempt=[])


@register_policy
class FCFSPolicy(Policy):
    """First come, first served — the vLLM default, kept as the baseline."""

    name = "fcfs"

    def __init__(self, **options: object) -> None:
        self.config: FCFSConfig = build_config(FCFSConfig, self.name, options)  # type: ignore[assignment]

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        return fcfs_decision(requests, capacity, self.config.head_of_line_blocking)
