"""The README's quick start runs as written: every Python block, against a real gateway in front
of the scripted engine (the default address and model name swapped for the test's), and the
package ships what a fresh install needs."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.scripted_engine import ScriptedEngine

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_quick_start_covers_what_a_new_user_needs() -> None:
    quick = README[README.index("## Quick start"):README.index("## The `andes` command")]
    for needle in ("bash scripts/serve.sh", "bash scripts/test.sh", "### 1. The chat page",
                   "?api_key=", "### 2. Any OpenAI SDK", "### 3. The Python client",
                   "ANDES_URL", "### 4. Proxy mode", "andes gateway --upstream"):
        assert needle in quick, needle
    assert len(BLOCKS) == 2  # the SDK and the Python client


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["openai-sdk", "python-client"])
async def test_readme_python_block_runs(index: int, gateway: object,
                                        upstream: ScriptedEngine) -> None:
    code = BLOCKS[index].replace("http://127.0.0.1:8080", gateway.url)  # type: ignore[attr-defined]
    code = code.replace("smollm2-135m-instruct", "test-model")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    assert "t0 t1 t2 t3 t4" in out.decode()
    assert upstream.requests >= 1


def test_the_wheel_ships_the_trace_the_page_and_the_type_hints(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                             "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("andes-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("andes", "bench", "core", "engine", "gateway", "slack"):
        assert f"{package}/py.typed" in names, package
    assert {"engine/sim/data/andes_sharegpt_qoe_trace.json.gz", "engine/sim/data/README.md",
            "gateway/static/index.html", "gateway/static/app.js"} <= names
