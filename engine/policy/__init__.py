"""Scheduling policies, chosen by name. Pure Python: no torch, vllm, aiohttp or asyncio imports.

Importing this package loads the contract (:mod:`engine.policy.base`) and the registry
(:mod:`engine.policy.registry`), not the policies: each is imported when first asked for by name.
"""

from engine.policy.base import Capacity, Decision, Policy, ReqState, RequestView
from engine.policy.registry import available_policies, get_policy, register_policy

__all__ = [
    "Capacity",
    "Decision",
    "Policy",
    "ReqState",
    "RequestView",
    "available_policies",
    "get_policy",
    "register_policy",
]
