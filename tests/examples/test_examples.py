"""The runnable examples work against a real gateway (in front of the scripted engine)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from bench.scripted_engine import ScriptedEngine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def _run_example(name: str, gateway_url: str) -> str:
    env = {**os.environ, "ANDES_URL": gateway_url, "ANDES_MODEL": "test-model"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), "Hello?", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.parametrize("name", ["openai_stream.py", "python_client.py"])
async def test_example_streams_an_answer_and_reports_qoe(
    name: str, gateway: object, upstream: ScriptedEngine
) -> None:
    out = await _run_example(name, gateway.url)  # type: ignore[attr-defined]
    assert "[QoE " in out
    assert upstream.requests == 1
