"""Arrival processes: mean rate, burstiness (CV), the duty cycle, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from engine.sim.arrivals import ArrivalSpec, arrival_times


def gaps(times: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], times]))


@pytest.mark.parametrize("kind", ["poisson", "gamma", "burst"])
def test_mean_rate_is_kept(kind: str) -> None:
    spec = ArrivalSpec(kind, rate_rps=4.0, cv=3.0, period_s=60.0)
    t = arrival_times(spec, 40_000, seed=1)
    assert np.all(np.diff(t) >= 0)
    assert len(t) / t[-1] == pytest.approx(4.0, rel=0.05)


def test_poisson_cv_is_one_and_gamma_cv_is_chosen() -> None:
    g = gaps(arrival_times(ArrivalSpec("poisson", 2.0), 40_000, seed=2))
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)
    for cv in (0.5, 3.0):
        g = gaps(arrival_times(ArrivalSpec("gamma", 2.0, cv=cv), 40_000, seed=2))
        assert g.std() / g.mean() == pytest.approx(cv, rel=0.1)


def test_burst_peak_is_twice_the_mean_for_35_percent() -> None:
    spec = ArrivalSpec("burst", rate_rps=5.0)  # 20-minute cycle
    t = arrival_times(spec, 60_000, seed=3)
    phase = np.mod(t, 1200.0)
    cycles = t[-1] / 1200.0
    peak_rate = np.sum(phase < 0.35 * 1200) / (cycles * 0.35 * 1200)
    low_rate = np.sum(phase >= 0.35 * 1200) / (cycles * 0.65 * 1200)
    assert peak_rate == pytest.approx(10.0, rel=0.05)
    assert low_rate == pytest.approx(spec.off_peak_rate_rps, rel=0.05)
    assert spec.off_peak_rate_rps == pytest.approx(5.0 * 0.3 / 0.65)


@pytest.mark.parametrize("kind", ["poisson", "gamma", "burst"])
def test_reproducible_from_the_seed(kind: str) -> None:
    spec = ArrivalSpec(kind, rate_rps=3.0, cv=2.0)
    assert np.array_equal(arrival_times(spec, 500, seed=9), arrival_times(spec, 500, seed=9))
    assert not np.array_equal(arrival_times(spec, 500, seed=9), arrival_times(spec, 500, seed=10))


def test_replay_gives_the_timestamps_back() -> None:
    spec = ArrivalSpec("replay", timestamps_s=(0.0, 0.5, 0.5, 2.0))
    assert arrival_times(spec, 3).tolist() == [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="4 timestamps, 5 requested"):
        arrival_times(spec, 5)
    with pytest.raises(ValueError, match=r"index 1 has 0\.5 after 1\.0"):
        ArrivalSpec("replay", timestamps_s=(1.0, 0.5))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kind": "uniform"}, "'uniform'"),
        ({"rate_rps": 0.0}, "rate_rps must be a finite number > 0, got 0.0"),
        ({"kind": "gamma", "cv": -1.0}, "cv must be a finite number > 0, got -1.0"),
        ({"kind": "burst", "peak_ratio": 3.0}, "peak_ratio=3.0"),
    ],
)
def test_bad_specs_quote_the_value(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ArrivalSpec(**kwargs)  # type: ignore[arg-type]
