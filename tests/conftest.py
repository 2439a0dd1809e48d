"""Shared fixtures. ``vllm_engine``: the real engine, started once per session on first use;
``upstream``, ``make_gateway``, ``gateway``, ``spy``: the scripted engine and a gateway in front of
it (:mod:`support.fixtures`)."""

from engine_fixture import vllm_engine, vllm_engine_process  # noqa: F401
from support.fixtures import gateway, make_gateway, spy, upstream  # noqa: F401
