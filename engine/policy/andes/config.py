"""The options of the ``andes`` policy (``get_policy("andes", horizon_s=3)``,
``ANDES_POLICY_OPTIONS='{"horizon_s": 3}'`` for the vLLM scheduler)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AndesConfig"]


@dataclass(frozen=True, slots=True)
class AndesConfig:
    """Options of the ``andes`` policy; validated on construction, errors quote the value."""

    horizon_s: float = 5.0  # look-ahead Δt over which Q_serve and Q_wait are compared
    batch_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the largest batch, to try
    # A smaller batch is tried only if it keeps this share of the largest one's token rate
    # (algorithm.py, batch_sizes: the work a smaller batch defers is invisible to the horizon).
    min_throughput_share: float = 0.98
    slack_staleness_s: float = 1.0  # slack reports older than this are ignored
    # A paused reader is served until this much reading is buffered, then yields (guards.py).
    resume_cushion_s: float = 5.0
    min_run_steps: int = 8  # steps after (re)admission during which a request is not parked
    min_run_s: float = 5.0  # and seconds (guards.py, "Anti-thrash")
    overhead_aware: bool = True  # price parks by their recompute (the paper's v2 refiner)
    latency_trigger: bool = True  # also decide when the batch is slower than its strictest reader
    # A reader late longer than this is starving and goes first (guards.py, "Starvation floor").
    starvation_s: float = 30.0
    # Share of engine time that recomputing parked requests may take (algorithm.py, step 4);
    # None: what the throughput floor lets go, 1 - min_throughput_share (park_share says why).
    park_budget: float | None = None
    # Admissions leave headroom for the running set's growth until the next full decision
    # (algorithm.py, step 5, growth()).
    admission_headroom: bool = True
    # A full decision at most this often while nothing it rests on changes (memory.py, "Cadence");
    # 0: every step.
    decide_every_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("horizon_s", "slack_staleness_s", "starvation_s"):
            _number(name, getattr(self, name), low=0.0, open_low=True)
        for name in ("min_run_s", "resume_cushion_s", "decide_every_s"):
            _number(name, getattr(self, name), low=0.0)
        if self.park_budget is not None:
            _number("park_budget", self.park_budget, low=0.0, high=1.0)
        _number("min_throughput_share", self.min_throughput_share, low=0.0, high=1.0)
        fr = self.batch_fractions
        if not (
            isinstance(fr, tuple)
            and fr
            and all(not isinstance(f, bool) and isinstance(f, int | float) and 0 < f <= 1
                    for f in fr)
        ):  # fmt: skip
            raise ValueError(f"batch_fractions must be a non-empty tuple of (0, 1], got {fr!r}")
        m = self.min_run_steps
        if isinstance(m, bool) or not (isinstance(m, int) and m >= 0):
            raise ValueError(f"min_run_steps must be an integer >= 0, got {m!r}")
        for name in ("overhead_aware", "latency_trigger", "admission_headroom"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @property
    def park_share(self) -> float:
        """The park budget in force: ``park_budget``, or by default the share of the token rate
        that the throughput floor lets go, ``1 - min_throughput_share``.

        Why the floor: a park's recompute is work the engine does twice, so the budget is token
        throughput given up, the same currency as the floor that bounds smaller batches. A budget
        above it lets parks alone break the floor where readers leave much buffered: on the
        engine grid (2026-12-07, default setting, readers at half their trace pace) a budget of
        0.05 cost 4–6% of stock vLLM's token rate, and one of 0.02 none at the same points
        (BENCHMARKS.md, "engine-grid: the park budget"). Raise ``park_budget`` to buy QoE with
        throughput."""
        return 1.0 - self.min_throughput_share if self.park_budget is None else self.park_budget


def _number(
    name: str, v: object, low: float, high: float = math.inf, open_low: bool = False
) -> None:
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    ok = ok and (v > low if open_low else v >= low) and v <= high  # type: ignore[operator]
    if not ok:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        extra = f" and <= {high:g}" if high < math.inf else ""
        raise ValueError(f"{name} must be a finite number {bound}{extra}, got {v!r}")
