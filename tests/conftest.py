"""Shared fixtures (tests/support/). ``vllm_engine``: the real engine, started once per session on
first use (:mod:`support.engine`); ``upstream``, ``make_gateway``, ``gateway``, ``spy``: the
scripted engine and a gateway in front of it (:mod:`support.fixtures`)."""

from support.engine import vllm_engine, vllm_engine_process  # noqa: F401
from support.fixtures import gateway, make_gateway, spy, upstream  # noqa: F401
