from __future__ import annotations

import pytest
from policy_snapshots import capacity, make_request

from engine.policy import ReqState, get_policy


def test_admits_in_arrival_order_while_memory_allows() -> None:
    reqs = [make_request(f"w{i}", arrival_s=float(i)) for i in (3, 1, 2, 0)]  # 2 blocks each
    d = get_policy("fcfs").schedule(10.0, reqs, capacity(kv_blocks=6))
    assert d.run == ["w0", "w1", "w2"]
    assert d.preempt == []


def test_head_of_line_blocking_matches_vllm_and_can_be_turned_off() -> None:
    reqs = [
        make_request("big", 0.0, prompt=160),  # 10 blocks
        make_request("small", 1.0),  # 2 blocks
    ]
    assert get_policy("fcfs").schedule(5.0, reqs, capacity(kv_blocks=4)).run == []
    relaxed = get_policy("fcfs", head_of_line_blocking=False)
    assert relaxed.schedule(5.0, reqs, capacity(kv_blocks=4)).run == ["small"]


def test_batch_limit() -> None:
    reqs = [make_request(f"w{i}", float(i)) for i in range(5)]
    assert get_policy("fcfs").schedule(9.0, reqs, capacity(100, max_batch=2)).run == ["w0", "w1"]


def test_memory_pressure_preempts_the_newest_running_and_admits_nothing() -> None:
    # Three running requests at a block boundary (32 + 16 tokens = 3 blocks each next step).
    reqs = [
        make_request(
            f"r{i}", float(i), ReqState.RUNNING, delivered_at=[i + 1.0 + k for k in range(16)]
        )
        for i in range(3)
    ]
    reqs.append(make_request("w", 0.5))
    d = get_policy("fcfs").schedule(30.0, reqs, capacity(kv_blocks=7))
    assert d.run == ["r0", "r1"]
    assert d.preempt == ["r2"]


def test_preempted_requests_resume_in_arrival_order() -> None:
    reqs = [
        make_request("p", 0.0, ReqState.PREEMPTED, delivered_at=[1.0, 1.2]),
        make_request("w", 1.0),
    ]
    assert get_policy("fcfs").schedule(5.0, reqs, capacity(kv_blocks=3)).run == ["p"]  # 34 tokens


def test_bad_config_is_rejected_with_the_value() -> None:
    with pytest.raises(ValueError, match="'yes'"):
        get_policy("fcfs", head_of_line_blocking="yes")
    with pytest.raises(ValueError, match="'bogus'"):
        get_policy("fcfs", bogus=1)


def test_unknown_policy_name() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'nope'.*andes.*fcfs.*lqf.*round_robin"):
        get_policy("nope")
