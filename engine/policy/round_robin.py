"""``round_robin`` — time slicing: when not everything fits, rotate who runs every few steps.

While every live request fits, this is :mod:`fcfs`. When some do not, the policy re-ranks every
``quantum_steps`` steps: requests that have gone longest without running come first (never-run ones
before all others, oldest arrival first among equals), packed greedily into the KV cache and the
batch limit; between rotations the running set is kept, and free room is filled in arrival order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.policy.base import (
    Capacity,
    Decision,
    Policy,
    RequestView,
)
from engine.policy.fcfs import fcfs_decision
from engine.policy.packing import greedy_pack
from engine.policy.registry import build_config, register_policy

__all__ = ["RoundRobinConfig", "RoundRobinPolicy"]


@dataclass(frozen=True, slots=True)
class RoundRobinConfig:
    """Options of the ``round_robin`` policy."""

    quantum_steps: int = 16  # steps a running set keeps the engine before the next rotation

    def __post_init__(self) -> None:
        if not (isinstance(self.quantum_steps, int) and self.quantum_steps >= 1):
            raise ValueError(f"quantum_steps must be an integer >= 1, got {self.quantum_steps!r}")


@register_policy
class RoundRobinPolicy(Policy):
    """Round robin over live requests in slices of ``quantum_steps`` engine steps."""

    name = "round_robin"

    def __init__(self, **options: object) -> None:
        config = build_config(RoundRobinConfig, self.name, options)
        self.config: RoundRobinConfig = config  # type: ignore[assignment]
        self._step = 0
        self._last_ran: dict[str, int] = {}  # req_id -> last step it was in the run list

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        step = self._step
        self._step += 1
        decision = fcfs_decision(requests, capacity, head_of_line_blocking=False)
        fits_all = not decision.preempt and len(decision.run) == len(requests)
        if not fits_all and step % self.config.quantum_steps == 0:
            last = self._last_ran
            order = sorted(requests, key=lambda r: (last.get(r.req_id, -1), r.arrival_s))
            decision = greedy_pack(order, capacity)
        live = {r.req_id for r in requests}
        self._last_ran = {k: v for k, v in self._last_ran.items() if k in live}
        for req_id in decision.run:
            self._last_ran[req_id] = step
        return decision
