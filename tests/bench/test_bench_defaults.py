"""``andes bench`` with its defaults against what ``andes serve`` runs: the shipped paper trace,
through the gateway, tokens counted exactly (the gateway's continuous usage, as delivered)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bench.scripted_engine import Script, ScriptedEngine


async def test_bench_defaults_run_the_paper_trace_through_the_gateway(
        gateway: object, upstream: ScriptedEngine, tmp_path: Path) -> None:
    upstream.script = Script(tokens=None)  # as many tokens as each request's max_tokens
    out = tmp_path / "runs.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "andes", "bench", "--url", gateway.url,  # type: ignore[attr-defined]
        "--num-requests", "3", "--rate", "20", "--max-output-tokens", "6", "--tds-scale", "20",
        "--json", str(out), "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert "token-count mismatches" not in stdout.decode() and "failed" not in stdout.decode()
    (run,) = json.loads(out.read_text())["runs"]
    assert run["meta"]["workload"].endswith("andes_sharegpt_qoe_trace.json.gz")
    assert run["summary"]["token_count_mismatches"] == 0
    for record in run["records"]:
        assert record["error"] is None and len(record["token_times_s"]) == 6
    # The trace's prompts reached the engine through the gateway, paced for their readers.
    bodies = [r.body for r in upstream.records]
    assert len(bodies) == 3 and all(b["prompt"] for b in bodies)
    assert all(b["vllm_xargs"]["andes_tds"] > 50 for b in bodies)  # the trace's pace x 20
