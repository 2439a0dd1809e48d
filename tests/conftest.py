"""Shared fixtures. ``vllm_engine``: the real engine, started once per session on first use."""

from engine_fixture import vllm_engine, vllm_engine_process  # noqa: F401
