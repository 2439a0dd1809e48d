"""The engine benchmark's pure parts: target arithmetic and resumable run files (no engine)."""

from __future__ import annotations

import math
from dataclasses import asdict

from bench.result import BenchRun, RequestRecord
from benchmarks import engine_qoe
from benchmarks.calibrate_cpu import decode_point, fit_profile
from core.qoe import QoESpec
from engine.sim.report import Summary


def row(policy: str, rate: float, q: float, tok_s: float = 100.0) -> Summary:
    nan = math.nan
    return Summary(
        policy, "measured", "poisson", rate, 10, q, q, q, nan, nan, nan, tok_s, nan, 0, 0.0
    )


def test_targets_pick_the_heaviest_collapsed_load_and_capacity() -> None:
    rows = [
        row("fcfs", 1, 0.95), row("fcfs", 2, 0.5), row("fcfs", 3, 0.25), row("fcfs", 4, 0.1),
        row("andes", 1, 0.97), row("andes", 2, 0.92), row("andes", 3, 0.7),
        row("andes", 4, 0.3, tok_s=85.0),
    ]  # fmt: skip
    lines = engine_qoe.targets(rows, "fcfs", "andes")
    assert "at 4 req/s" in lines[0] and "**3.00×** (met)" in lines[0]
    assert "fcfs 1 req/s, andes 2 req/s" in lines[1] and "**2.00×** (met;" in lines[1]
    assert "worst **15.0%** at 4 req/s (missed)" in lines[2]


def test_targets_say_when_a_target_was_not_measured() -> None:
    lines = engine_qoe.targets([row("fcfs", 1, 0.8), row("andes", 1, 0.85)], "fcfs", "andes")
    assert "not measured" in lines[0] and "not measured" in lines[1]


def settings(**changes) -> engine_qoe.Settings:
    base = dict(workload="synthetic", skip=0, seed=0, duration_s=5.0, tds_scale=0.5,
                max_prompt_tokens=64, max_output_tokens=16, kv_tokens=1024, block_size=16,
                max_num_seqs=8, enforce_eager=False)  # fmt: skip
    return engine_qoe.Settings(**{**base, **changes})


def test_saved_loads_are_reused_only_with_the_same_settings(tmp_path) -> None:
    s = settings()
    run = BenchRun([RequestRecord("a", 0.0, QoESpec(), 4, 4, 0.0, [0.1, 0.2], end_s=0.3)],
                   meta={"settings": asdict(s)})  # fmt: skip
    run.save(engine_qoe.run_path("fcfs", 1.5, tmp_path))
    assert engine_qoe.load_run("fcfs", 1.5, s, tmp_path) is not None
    assert engine_qoe.load_run("fcfs", 1.5, settings(seed=1), tmp_path) is None
    assert engine_qoe.load_run("andes", 1.5, s, tmp_path) is None
    plan = s.plan(2.0)
    assert plan == s.plan(2.0) and all(p.at_s < 5.0 and p.max_tokens <= 16 for p in plan)


def test_profile_fit_recovers_a_linear_latency_model() -> None:
    a, b, c, d = 0.02, 0.004, 2e-6, 3e-4
    decode = [{"batch": n, "context_tokens": n * ctx, "token_s": a + b * n + c * n * ctx}
              for n in (1, 2, 4, 8, 16) for ctx in (64, 300)]  # fmt: skip
    prefill = [{"prompt_tokens": p, "ttft_s": 0.05 + d * p} for p in (16, 128, 384)]
    profile, quality = fit_profile({"decode": decode, "prefill": prefill}, settings())
    assert math.isclose(profile.overhead_s, a, rel_tol=1e-6)
    assert math.isclose(profile.decode_s_per_seq, b, rel_tol=1e-6)
    assert math.isclose(profile.kv_read_s_per_token, c, rel_tol=1e-6)
    assert math.isclose(profile.prefill_s_per_token, d, rel_tol=1e-6)
    assert profile.kv_capacity_blocks == 64 and "10 points" in quality


def test_decode_point_uses_the_window_where_every_stream_decodes() -> None:
    recs = [
        RequestRecord("a", 0.0, QoESpec(), 10, 6, 0.0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], end_s=1),
        RequestRecord("b", 0.0, QoESpec(), 10, 6, 0.0, [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], end_s=1),
    ]
    point = decode_point(BenchRun(recs), skip_tokens=1)
    assert point is not None and point["batch"] == 2
    assert math.isclose(point["token_s"], 0.1, rel_tol=1e-9)
