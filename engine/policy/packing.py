"""Greedy packing of requests, in priority order, into the KV cache and the batch limit."""

from __future__ import annotations

from collections.abc import Iterable

from engine.policy.base import ON_DEVICE, Capacity, Decision, RequestView, step_blocks

__all__ = ["greedy_pack"]


def greedy_pack(priority: Iterable[RequestView], capacity: Capacity) -> Decision:
    """Admit requests in ``priority`` order while their next step fits; preempt running leftovers.

    A request that does not fit is skipped (smaller ones after it may still fit). Running requests
    that are left out are preempted, lowest priority first.
    """
    free, slots = capacity.kv_blocks, capacity.max_batch
    run: list[str] = []
    left_out: list[str] = []
    for r in priority:
        blocks = step_blocks(r, capacity.block_size)
        if slots > 0 and blocks <= free:
            run.append(r.req_id)
            free -= blocks
            slots -= 1
        elif r.state in ON_DEVICE:
            left_out.append(r.req_id)
    return Decision(run=run, preempt=left_out[::-1])
