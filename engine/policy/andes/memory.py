"""What ``andes`` remembers between steps: when each request came onto the device, the park
budget's credit, and the last full decision. The definition and the fast path keep one each and
update it the same way.

**Cadence.** A decision values every request over a horizon of seconds; re-deriving it every
engine step (tens of milliseconds) gives nearly the same answer at a cost that grows with the
queue. So a full decision is reused for up to ``decide_every_s`` while nothing it rests on has
changed: the same constraints bind, the running set's growth still fits the cache, and no
waiting request could be admitted into free room without a park (a request that finished, or
a growth that would overflow, forces a full decision at once). A reused decision runs the same
requests (those still live) and parks nobody again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.policy.andes.config import AndesConfig
from engine.policy.base import Decision

__all__ = ["Memory"]

_BURST_S = 60.0  # the park budget may be spent this many seconds' worth at once


@dataclass(frozen=True, slots=True)
class StepState:
    """What a decision rests on, cheap to compute every step (the cadence's test)."""

    binds: tuple[str, ...]
    free: int  # KV blocks free after every on-device request's next step (< 0: overflow)
    reserve: int  # headroom the running set reserves (algorithm.py, step 5)
    smallest_wait: int  # KV blocks of the smallest waiting request (a huge number if none)
    on_device: int
    max_batch: int

    def forces_decision(self) -> bool:
        """Growth overflows, or a waiting request fits in a free slot and free room."""
        room = self.on_device < self.max_batch and self.smallest_wait + self.reserve <= self.free
        return self.free < 0 or room


class Memory:
    """Per-request admission times, the park budget and the last full decision."""

    def __init__(self, config: AndesConfig) -> None:
        self.config = config
        self.step = -1  # steps seen (schedule calls), the current one included
        self._admitted: dict[str, tuple[int, float]] = {}  # req_id -> (step, seconds)
        self._credit = config.park_share * _BURST_S
        self._credit_at: float | None = None
        self._last: tuple[float, StepState, Decision] | None = None  # the last full decision

    def begin(self, now_s: float, came_on: Iterable[str], gone: Iterable[str]) -> None:
        """A new step: ``came_on`` were (re)admitted since the last one, ``gone`` ended."""
        self.step += 1
        for req_id in gone:
            self._admitted.pop(req_id, None)
        for req_id in came_on:
            self._admitted[req_id] = (self.step, now_s)

    def just_admitted(self, req_id: str, now_s: float) -> bool:
        """Whether ``req_id`` came onto the device less than ``min_run_steps`` steps or
        ``min_run_s`` seconds ago (guards.py, "Anti-thrash")."""
        got = self._admitted.get(req_id)
        if got is None:
            return False
        step, t_s = got
        cfg = self.config
        return step > self.step - cfg.min_run_steps or t_s > now_s - cfg.min_run_s

    def recent(self, now_s: float) -> list[str]:
        """The requests :meth:`just_admitted` says yes to (forgetting the ones no longer recent,
        so this stays as small as the admissions of the last ``min_run_s``)."""
        cfg = self.config
        gone = [r for r, (step, t_s) in self._admitted.items()
                if not (step > self.step - cfg.min_run_steps or t_s > now_s - cfg.min_run_s)]
        for r in gone:
            del self._admitted[r]
        return list(self._admitted)

    def park_credit(self, now_s: float, config: AndesConfig) -> float:
        """Engine seconds of recompute the budget allows now (it accrues at ``park_share``)."""
        if self._credit_at is not None and now_s > self._credit_at:
            cap = config.park_share * _BURST_S
            self._credit = min(cap, self._credit + config.park_share * (now_s - self._credit_at))
        self._credit_at = now_s if self._credit_at is None else max(self._credit_at, now_s)
        return self._credit

    def burst_s(self, config: AndesConfig) -> float:
        """The most the budget holds at once (its credit never exceeds this)."""
        return config.park_share * _BURST_S

    def reuse(self, now_s: float, state: StepState,
              live: Callable[[str], bool]) -> Decision | None:  # fmt: skip
        """The last full decision, for the requests still ``live``, if the cadence allows it."""
        last = self._last
        if last is None or state.forces_decision():
            return None
        t_s, before, decision = last
        if before.binds != state.binds or now_s - t_s >= self.config.decide_every_s:
            return None
        return Decision(run=[r for r in decision.run if live(r)], preempt=[])

    def remember(self, now_s: float, state: StepState | None, decision: Decision | None) -> None:
        """A full decision was made (``None``: nothing bound; nothing to reuse)."""
        self._last = None if decision is None or state is None else (now_s, state, decision)

    def spend(self, park_s: float) -> None:
        """The step's parks cost ``park_s`` engine seconds of recompute."""
        self._credit -= park_s
