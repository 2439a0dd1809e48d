"""Arrival processes: when each simulated request arrives.

Every process is described by a frozen :class:`ArrivalSpec` and turned into absolute arrival times
(seconds, starting near 0, non-decreasing) by :func:`arrival_times` with an explicit seed, so a run
is reproducible from ``(spec, n, seed)``:

* ``poisson`` — exponential inter-arrival gaps at ``rate_rps`` (CV 1).
* ``gamma`` — Gamma-distributed gaps with mean ``1/rate_rps`` and coefficient of variation ``cv``
  (shape ``k = 1/cv²``); ``cv > 1`` gives bursty traffic, ``cv < 1`` smoother than Poisson.
* ``burst`` — the paper's duty-cycle bursts (§6, "bursty" workload): a Poisson process whose rate is
  ``peak_ratio`` × the average for ``peak_fraction`` of every ``period_s`` cycle and lower for the
  rest, so that the long-run mean rate stays ``rate_rps``. Defaults: 2× for 35% of a 20-min cycle.
* ``replay`` — given timestamps, as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ARRIVAL_KINDS", "ArrivalSpec", "arrival_times"]

ARRIVAL_KINDS = ("poisson", "gamma", "burst", "replay")


@dataclass(frozen=True, slots=True)
class ArrivalSpec:
    """How requests arrive. ``rate_rps`` is the long-run mean rate (unused by ``replay``)."""

    kind: str = "poisson"
    rate_rps: float = 1.0  # mean requests per second
    cv: float = 1.0  # gamma: coefficient of variation of the inter-arrival gaps
    peak_ratio: float = 2.0  # burst: peak rate ÷ mean rate
    peak_fraction: float = 0.35  # burst: share of each cycle spent at the peak rate
    period_s: float = 1200.0  # burst: cycle length, seconds (20 minutes)
    timestamps_s: tuple[float, ...] = field(default=())  # replay: the arrival times

    def __post_init__(self) -> None:
        if self.kind not in ARRIVAL_KINDS:
            raise ValueError(
                f"arrival kind must be one of {', '.join(ARRIVAL_KINDS)}, got {self.kind!r}"
            )
        if self.kind != "replay" and not (math.isfinite(self.rate_rps) and self.rate_rps > 0):
            raise ValueError(f"rate_rps must be a finite number > 0, got {self.rate_rps!r}")
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"cv must be a finite number > 0, got {self.cv!r}")
        if not (0 < self.peak_fraction < 1):
            raise ValueError(f"peak_fraction must be in (0, 1), got {self.peak_fraction!r}")
        # The off-peak rate must stay >= 0 for the mean to be kept: peak_ratio · fraction <= 1.
        if not (self.peak_ratio >= 1 and self.peak_ratio * self.peak_fraction <= 1):
            raise ValueError(
                f"peak_ratio must be >= 1 and peak_ratio * peak_fraction <= 1 (mean rate kept),"
                f" got peak_ratio={self.peak_ratio!r}, peak_fraction={self.peak_fraction!r}"
            )
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"period_s must be a finite number > 0, got {self.period_s!r}")
        if self.kind == "replay":
            ts = self.timestamps_s
            if any(not math.isfinite(t) for t in ts):
                raise ValueError("replay timestamps must be finite numbers")
            bad = next((i for i in range(1, len(ts)) if ts[i] < ts[i - 1]), None)
            if bad is not None:
                raise ValueError(
                    f"replay timestamps must be non-decreasing; index {bad} has {ts[bad]!r}"
                    f" after {ts[bad - 1]!r}"
                )

    @property
    def off_peak_rate_rps(self) -> float:
        """``burst``: the rate outside the peak that keeps the mean at ``rate_rps``."""
        return self.rate_rps * (1 - self.peak_ratio * self.peak_fraction) / (1 - self.peak_fraction)


def arrival_times(spec: ArrivalSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` absolute arrival times in seconds, non-decreasing, reproducible from ``seed``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    rng = np.random.default_rng(seed)
    if spec.kind == "poisson":
        return np.cumsum(rng.exponential(1.0 / spec.rate_rps, n))
    if spec.kind == "gamma":
        shape = 1.0 / spec.cv**2
        return np.cumsum(rng.gamma(shape, 1.0 / (spec.rate_rps * shape), n))
    if spec.kind == "burst":
        return _duty_cycle(spec, rng.exponential(1.0, n).cumsum())
    if len(spec.timestamps_s) < n:
        raise ValueError(f"replay has {len(spec.timestamps_s)} timestamps, {n} requested")
    return np.asarray(spec.timestamps_s[:n], dtype=float)


def _duty_cycle(spec: ArrivalSpec, unit_times: Sequence[float] | np.ndarray) -> np.ndarray:
    """Map a unit-rate Poisson process through the inverse cumulative intensity (time rescaling).

    The intensity is ``peak`` for the first ``peak_fraction`` of each cycle and ``low`` after, so
    the cumulative intensity per cycle is ``rate_rps·period_s`` and its inverse is piecewise linear.
    """
    peak = spec.rate_rps * spec.peak_ratio
    low = spec.off_peak_rate_rps
    t_peak = spec.peak_fraction * spec.period_s
    per_cycle = spec.rate_rps * spec.period_s  # expected arrivals per cycle
    at_peak_end = peak * t_peak  # cumulative intensity when the peak ends
    u = np.asarray(unit_times, dtype=float)
    cycles = np.floor(u / per_cycle)
    rem = u - cycles * per_cycle
    in_peak = rem <= at_peak_end
    # low == 0 only when the peak carries the whole cycle; then rem never exceeds at_peak_end.
    off = t_peak + (rem - at_peak_end) / (low if low > 0 else math.inf)
    within = np.where(in_peak, rem / peak, off)
    return cycles * spec.period_s + within
