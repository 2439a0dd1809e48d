"""The rules both adapters follow to carry out a decision (engine/policy/plan.py)."""

from __future__ import annotations

import pytest

from engine.policy.base import Decision, ReqState
from engine.policy.plan import UnknownRequest, fcfs_plan, plan_step

R, H, W, P = ReqState.RUNNING, ReqState.HELD, ReqState.WAITING, ReqState.PREEMPTED


def test_on_device_requests_left_out_are_held_not_preempted() -> None:
    states = {"a": R, "b": R, "c": H, "w": W}
    plan = plan_step(Decision(run=["b", "w"]), states, max_batch=8)
    assert plan.running == ["b"] and plan.admit == ["w"]
    assert plan.hold == ["a", "c"] and plan.preempt == [] and plan.wait == []


def test_preempt_wins_over_run_and_only_frees_what_is_on_the_device() -> None:
    states = {"a": R, "p": P, "w": W}
    plan = plan_step(Decision(run=["a", "p"], preempt=["a", "p", "a"]), states, max_batch=8)
    assert plan.preempt == ["a"]  # listed twice: counted once; "p" holds no KV: ignored
    assert plan.running == [] and plan.admit == ["p"] and plan.wait == ["w"]


def test_running_beyond_the_batch_limit_are_held_lowest_priority_first() -> None:
    states = {"a": R, "b": R, "c": R}
    plan = plan_step(Decision(run=["c", "a", "b"]), states, max_batch=2)
    assert plan.running == ["c", "a"] and plan.hold == ["b"]


def test_a_decision_naming_a_request_that_is_not_live_is_an_error() -> None:
    with pytest.raises(UnknownRequest, match="'ghost'"):
        plan_step(Decision(run=["ghost"]), {"a": R}, max_batch=2)


def test_the_engines_own_order_is_fcfs() -> None:
    states = {"new": W, "old": R, "mid": H, "w2": P}
    arrival = {"new": 3.0, "old": 0.0, "mid": 1.0, "w2": 2.0}
    plan = fcfs_plan(states, arrival, max_batch=1)
    assert plan.running == ["old"] and plan.hold == ["mid"] and plan.admit == ["w2", "new"]
