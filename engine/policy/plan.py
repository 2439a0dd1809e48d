"""How a :class:`~engine.policy.base.Decision` becomes a step: the one set of rules both adapters
follow (the simulator in ``engine/sim/simulator.py``, vLLM's scheduler in
``engine/vllm/scheduler.py``).

:func:`plan_step` sorts every live request into what happens to it this step; the adapter then
does the memory work with its own machinery, in this order:

1. ``preempt`` — free their KV (vLLM: ``_preempt_request``);
2. ``hold`` — keep their KV, leave them out of this step;
3. ``running`` — on-device requests that take the step, in priority order; when their growth
   overflows the KV cache the engine preempts from the *end* of this order (vLLM pops
   ``running[-1]``) until the rest fit, and then admits nobody this step (as vLLM does);
4. ``admit`` — waiting or preempted requests, in order, while KV blocks and the batch limit
   allow; admission stops at the first that does not fit (vLLM ``break``s out of its waiting
   loop).

Rules for a decision that is not tidy: an id listed twice counts once, where it first appears; an
id in both ``run`` and ``preempt`` is preempted; ``preempt`` of a request that holds no KV is
ignored; on-device requests beyond ``max_batch`` in ``run`` are held, lowest priority first (a
hold costs nothing, a park a recompute); an id that is not live is an error the adapter reports
(:class:`UnknownRequest`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from engine.policy.base import ON_DEVICE, Decision, ReqState

__all__ = ["StepPlan", "UnknownRequest", "fcfs_plan", "plan_step"]


class UnknownRequest(ValueError):
    """A decision named a request that is not live."""


@dataclass(slots=True)
class StepPlan:
    """What happens to each live request this step (see the module docstring for the order)."""

    preempt: list[str] = field(default_factory=list)  # on-device → KV freed, in this order
    hold: list[str] = field(default_factory=list)  # on-device → kept out of the step, KV kept
    running: list[str] = field(default_factory=list)  # on-device → take the step, by priority
    admit: list[str] = field(default_factory=list)  # waiting/preempted → admit in this order
    wait: list[str] = field(default_factory=list)  # waiting/preempted → not this step


def plan_step(decision: Decision, states: Mapping[str, ReqState], max_batch: int) -> StepPlan:
    """Sort every live request (``states``: id → state, in the engine's own order) by ``decision``.

    Raises :class:`UnknownRequest` for an id in ``decision`` that is not in ``states``.
    """
    plan = StepPlan()
    gone = set()
    for req_id in _unique(decision.preempt):
        state = _state(states, req_id)
        if state in ON_DEVICE:
            plan.preempt.append(req_id)
            gone.add(req_id)
    listed = set()
    for req_id in _unique(decision.run):
        state = _state(states, req_id)
        if req_id in gone:
            continue
        listed.add(req_id)
        if state not in ON_DEVICE:
            plan.admit.append(req_id)
        elif len(plan.running) < max_batch:
            plan.running.append(req_id)
        else:
            plan.hold.append(req_id)
    for req_id, state in states.items():
        if req_id in gone or req_id in listed:
            continue
        (plan.hold if state in ON_DEVICE else plan.wait).append(req_id)
    return plan


def fcfs_plan(
    states: Mapping[str, ReqState], arrival_s: Mapping[str, float], max_batch: int
) -> StepPlan:
    """The engine's own order when a policy has no decision: on-device requests run oldest first
    (the newest beyond ``max_batch`` are held), then waiting ones may be admitted, oldest first
    (vLLM's FCFS)."""
    by_age = sorted(states, key=lambda r: (arrival_s[r], r))
    on_device = [r for r in by_age if states[r] in ON_DEVICE]
    return StepPlan(
        hold=on_device[max_batch:],
        running=on_device[:max_batch],
        admit=[r for r in by_age if states[r] not in ON_DEVICE],
    )


def _unique(ids: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return [r for r in ids if not (r in seen or seen.add(r))]  # type: ignore[func-returns-value]


def _state(states: Mapping[str, ReqState], req_id: str) -> ReqState:
    try:
        return states[req_id]
    except KeyError:
        raise UnknownRequest(f"the decision names {req_id!r}, which is not live") from None
