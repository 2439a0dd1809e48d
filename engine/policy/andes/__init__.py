"""``andes`` — the paper's QoE-aware scheduler (Liu et al., arXiv 2404.16283, §4, Algorithm 1).

Each step it asks what binds — the batch limit, the KV cache, or the batch's speed against its
readers — and when nothing does, it leaves the step to the engine (``None``, at the cost of a
few array sums). Otherwise it values every request by what serving it over the next
``horizon_s`` adds to its QoE, packs the densest into what binds, and pulls the cheapest lever
that carries the choice out: order, then hold (a stream whose reader has seconds buffered sits
out a step and keeps its KV), and a park (KV freed, recomputed later) only for a due request
that gains more than the park costs, within a budget of engine time.

* :mod:`~engine.policy.andes.algorithm` — Algorithm 1 and the refiner, the definition;
* :mod:`~engine.policy.andes.fast` — the same decisions, fast (what :class:`AndesPolicy` runs);
* :mod:`~engine.policy.andes.guards` — where each reader is (measured or inferred), and the
  guards on top of the algorithm, each with the reason it exists;
* :mod:`~engine.policy.andes.config` — the options; :mod:`~engine.policy.andes.memory` — what
  the policy remembers between steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.policy.andes.algorithm import Outcome, decide
from engine.policy.andes.config import AndesConfig
from engine.policy.andes.fast import Columns, decide_fast
from engine.policy.andes.guards import row_of
from engine.policy.andes.memory import Memory
from engine.policy.base import Capacity, Decision, Policy, RequestView
from engine.policy.registry import build_config, register_policy

__all__ = ["AndesConfig", "AndesPolicy", "AndesReference"]


@register_policy
class AndesPolicy(Policy):
    """QoE-aware scheduling (Algorithm 1 with the v2 refiner), deciding only when it matters."""

    name = "andes"
    idle_when_unbound = True

    def __init__(self, **options: object) -> None:
        self.config: AndesConfig = build_config(AndesConfig, self.name, options)  # type: ignore[assignment]
        self.memory = Memory(self.config)
        self.last = Outcome(None)  # the last step's outcome (what bound; for benchmarks, tests)
        self._cols = Columns()

    @property
    def last_triggered(self) -> bool:
        """Whether the last step had a decision to make (something bound)."""
        return bool(self.last.binds)

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision | None:
        gone, came_on = self._cols.sync(requests, capacity.block_size)
        self.memory.begin(now_s, came_on, gone)
        self.last = decide_fast(now_s, self._cols, self.memory, capacity, self.config)
        return self.last.decision


class AndesReference(AndesPolicy):
    """The same policy deciding with the definition (:func:`~engine.policy.andes.algorithm.decide`)
    over every request re-read each step: slow, and the yardstick the fast path is tested against.
    """

    name = "andes-reference"

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._off: set[str] = set()  # seen waiting or parked at the last step

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision | None:
        rows = [row_of(v, capacity.block_size) for v in requests]
        live = {r.req_id for r in rows}
        gone = [r for r in self._off if r not in live]
        came_on = [r.req_id for r in rows if r.on_device and r.req_id in self._off]
        self._off = {r.req_id for r in rows if not r.on_device}
        self.memory.begin(now_s, came_on, gone)
        self.last = decide(now_s, rows, self.memory, capacity, self.config)
        return self.last.decision
