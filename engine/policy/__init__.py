"""Scheduling policies, chosen by name. Pure Python: no torch, vllm, aiohttp or asyncio imports."""

from engine.policy.base import (
    Capacity,
    Decision,
    Policy,
    ReqState,
    RequestView,
    SlackReport,
    available_policies,
    get_policy,
    register_policy,
)

# Importing the modules registers the built-in policies.
from engine.policy import andes, fcfs, lqf, round_robin  # noqa: F401  isort: skip

__all__ = [
    "Capacity",
    "Decision",
    "Policy",
    "ReqState",
    "RequestView",
    "SlackReport",
    "available_policies",
    "get_policy",
    "register_policy",
]
