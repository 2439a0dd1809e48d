"""Shared fixtures (tests/support/). ``vllm_engine``: the real engine, started once per session on
first use (:mod:`support.engine`); ``stock_vllm_process`` and ``llama_process``: engines Andes
does not control, for the gateway's proxy mode; ``upstream``, ``make_gateway``, ``gateway``,
``spy``: the scripted engine and a gateway in front of it (:mod:`support.fixtures`).

Hypothesis profiles: ``andes`` for the suite, and ``andes-long`` for a longer local fuzz run
(``pytest --hypothesis-profile=andes-long tests/gateway/test_fuzz.py
tests/slack/test_wire_fuzz.py``); the fuzz tests take a quarter of the profile's
``max_examples``.
"""

from hypothesis import HealthCheck, settings
from support.engine import (  # noqa: F401
    llama_process,
    stock_vllm_process,
    vllm_engine,
    vllm_engine_process,
)
from support.fixtures import gateway, make_gateway, spy, upstream  # noqa: F401

# Property tests check behaviour, not speed: a 2-core machine busy with an engine can take longer
# than hypothesis's 200 ms per example without anything being wrong (a timing assertion in all
# but name). Profiles set elsewhere may still choose their own.
settings.register_profile("andes", deadline=None)
settings.register_profile("andes-long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("andes")
