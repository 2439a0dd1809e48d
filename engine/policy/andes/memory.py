"""What ``andes`` remembers between steps: when each request came onto the device, and the park
budget's credit. The definition and the fast path keep one each and update it the same way."""

from __future__ import annotations

from collections.abc import Iterable

from engine.policy.andes.config import AndesConfig

__all__ = ["Memory"]

_BURST_S = 60.0  # the park budget may be spent this many seconds' worth at once


class Memory:
    """Per-request admission times and the park budget (see :class:`AndesConfig`)."""

    def __init__(self, config: AndesConfig) -> None:
        self.config = config
        self.step = -1  # steps seen (schedule calls), the current one included
        self._admitted: dict[str, tuple[int, float]] = {}  # req_id -> (step, seconds)
        self._credit = config.park_budget * _BURST_S
        self._credit_at: float | None = None

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
        """Engine seconds of recompute the budget allows now (it accrues at ``park_budget``)."""
        if self._credit_at is not None and now_s > self._credit_at:
            cap = config.park_budget * _BURST_S
            self._credit = min(cap, self._credit + config.park_budget * (now_s - self._credit_at))
        self._credit_at = now_s if self._credit_at is None else max(self._credit_at, now_s)
        return self._credit

    def burst_s(self, config: AndesConfig) -> float:
        """The most the budget holds at once (its credit never exceeds this)."""
        return config.park_budget * _BURST_S

    def spend(self, park_s: float) -> None:
        """The step's parks cost ``park_s`` engine seconds of recompute."""
        self._credit -= park_s
