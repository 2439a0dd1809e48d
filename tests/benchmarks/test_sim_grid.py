"""benchmarks/sim_grid.py's fidelity: which measured runs it replays, and with what."""

from __future__ import annotations

import json
from pathlib import Path

from bench.result import BenchRun, RequestRecord
from benchmarks.sim_grid import PROFILE_JSON, fidelity
from core.qoe import QoESpec


def _run(path: Path, point: str, policy: str, prompt_usage: int | None) -> None:
    records = [
        RequestRecord(f"{point}-{policy}-{i}", 0.5 * i, QoESpec(1.0, 5.0), prompt_tokens_est=40,
                      max_tokens=16, token_times_s=[0.2 + 0.1 * k for k in range(16)],
                      usage_prompt_tokens=prompt_usage, end_s=2.0)
        for i in range(4)
    ]  # fmt: skip
    meta = {"policy": policy, "plan": {"setting": "default", "point": point}}
    BenchRun(records, meta).save(path)


def test_replays_every_measured_point_the_knee_included(tmp_path: Path) -> None:
    runs = tmp_path / "default"
    runs.mkdir()
    (runs / "knee.json").write_text(json.dumps({"knee_rps": 4}))  # the search's answer: no run
    _run(runs / "knee_stock.json", "knee", "stock", prompt_usage=37)
    _run(runs / "2x-trace-poisson_andes.json", "2x-trace-poisson", "andes", prompt_usage=None)
    rows = fidelity(PROFILE_JSON, tmp_path)
    assert sorted((r["point"], r["policy"]) for r in rows) == [
        ("2x-trace-poisson", "andes"), ("knee", "stock")]
    for r in rows:  # four short requests on an idle engine: every reader served on time
        assert r["measured"] == r["simulated"] == 1.0
