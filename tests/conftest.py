"""Shared fixtures (tests/support/). ``vllm_engine``: the real engine, started once per session on
first use (:mod:`support.engine`); ``stock_vllm_process`` and ``llama_process``: engines Andes
does not control, for the gateway's proxy mode; ``upstream``, ``make_gateway``, ``gateway``,
``spy``: the scripted engine and a gateway in front of it (:mod:`support.fixtures`)."""

from support.engine import (  # noqa: F401
    llama_process,
    stock_vllm_process,
    vllm_engine,
    vllm_engine_process,
)
from support.fixtures import gateway, make_gateway, spy, upstream  # noqa: F401
