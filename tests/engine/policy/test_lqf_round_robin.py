from __future__ import annotations

import pytest
from policy_snapshots import capacity, make_request

from engine.policy import ReqState, get_policy


def test_lqf_runs_the_worst_off_reader_first() -> None:
    now = 20.0
    happy = make_request(
        "happy", 0.0, ReqState.RUNNING, delivered_at=[1.0 + 0.2 * k for k in range(16)]
    )
    starved = make_request("starved", 5.0, ReqState.PREEMPTED, delivered_at=[15.0])  # 9 s late
    d = get_policy("lqf").schedule(now, [happy, starved], capacity(kv_blocks=3))
    assert d.run == ["starved"] and d.preempt == ["happy"]


def test_round_robin_rotates_every_quantum_when_not_everything_fits() -> None:
    rr = get_policy("round_robin", quantum_steps=2)
    reqs = [make_request(f"w{i}", float(i)) for i in range(3)]
    cap = capacity(kv_blocks=100, max_batch=2)
    first = rr.schedule(10.0, reqs, cap).run
    assert first == ["w0", "w1"]
    running = [
        make_request(r.req_id, r.arrival_s, ReqState.RUNNING if r.req_id in first else r.state)
        for r in reqs
    ]
    assert rr.schedule(10.1, running, cap).run == ["w0", "w1"]  # inside the quantum: kept
    rotated = rr.schedule(10.2, running, cap)
    assert rotated.run[0] == "w2" and len(rotated.run) == 2 and len(rotated.preempt) == 1


def test_round_robin_is_fcfs_when_everything_fits() -> None:
    reqs = [make_request(f"w{i}", float(i)) for i in range(3)]
    assert get_policy("round_robin").schedule(1.0, reqs, capacity(100)).run == ["w0", "w1", "w2"]


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [("lqf", "horizon_s", -1.0), ("lqf", "horizon_s", "1"), ("round_robin", "quantum_steps", 0)],
)
def test_bad_config_is_rejected_with_the_value(name: str, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=repr(value).replace("(", r"\(")):
        get_policy(name, **{option: value})
