"""``lqf`` — least QoE first: the requests whose readers are worst off run first.

Each step every live request is ranked by the QoE it will have ``horizon_s`` from now if it gets no
token (:func:`core.qoe.predict_wait`; with ``horizon_s=0`` its QoE so far, truncated at now), and
the ranking is packed greedily into the KV cache and the batch limit. A baseline for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.qoe import predict_wait
from engine.policy.base import (
    ON_DEVICE,
    Capacity,
    Decision,
    Policy,
    RequestView,
)
from engine.policy.packing import greedy_pack
from engine.policy.registry import build_config, register_policy

__all__ = ["LQFConfig", "LQFPolicy"]


@dataclass(frozen=True, slots=True)
class LQFConfig:
    """Options of the ``lqf`` policy."""

    horizon_s: float = 1.0  # rank by the QoE predicted this far ahead if the request waits

    def __post_init__(self) -> None:
        if not (isinstance(self.horizon_s, int | float) and math.isfinite(self.horizon_s)):
            raise ValueError(f"horizon_s must be a finite number >= 0, got {self.horizon_s!r}")
        if self.horizon_s < 0:
            raise ValueError(f"horizon_s must be a finite number >= 0, got {self.horizon_s!r}")


@register_policy
class LQFPolicy(Policy):
    """Least (predicted) QoE first; ties go to running requests, then to the oldest."""

    name = "lqf"

    def __init__(self, **options: object) -> None:
        self.config: LQFConfig = build_config(LQFConfig, self.name, options)  # type: ignore[assignment]

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        h = self.config.horizon_s
        order = sorted(
            requests,
            key=lambda r: (
                predict_wait(r.tracker, now_s, h),
                r.state not in ON_DEVICE,
                r.arrival_s,
            ),
        )
        return greedy_pack(order, capacity)
