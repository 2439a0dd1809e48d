"""benchmarks/calibrate_steps.py: the latency profile fitted from an engine's decision trace."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from benchmarks.calibrate_steps import fit, main, steps
from engine.sim.profile import LatencyProfile

TRUE = (0.020, 0.0005, 2e-7, 0.0003)  # overhead, per decoding seq, per context token, per prefill


def _trace(n: int, seed: int = 0, gap_every: int = 0, pause_at: int = -1) -> list[str]:
    """A decision trace of ``n`` steps run by the model ``TRUE``, with 1 ms of policy time in
    each, a step left untraced every ``gap_every`` steps, and one 5 s pause at ``pause_at``."""
    rng = random.Random(seed)
    a, b, c, d = TRUE
    lines, t, step = [], 1000.0, 0
    for k in range(n):
        step += 1
        decode = rng.randint(10, 120)
        prefill = rng.choice([0, 0, 50, 300, 1000])
        context = decode * rng.randint(100, 900) + prefill
        rec = {"t": t, "step": step, "scheduled": decode + (prefill > 0), "decode": decode,
               "tokens": decode + prefill, "context": context, "policy_ms": 1.0}
        lines.append(json.dumps(rec))
        dur = a + b * decode + c * context + d * prefill
        t += dur + 0.001 + (5.0 if k == pause_at else 0.0)  # the next step's policy time
        if gap_every and k % gap_every == gap_every - 1:
            step += 1  # an untraced step: its time must not be charged to this one
            t += 0.5
    return lines


def test_the_fit_recovers_the_engines_step_model() -> None:
    points = steps(_trace(400, gap_every=7, pause_at=100))
    assert len(points) < 399  # the steps before a gap are left out
    profile, quality = fit(points, LatencyProfile("base", kv_capacity_blocks=100), "synthetic")
    got = (profile.overhead_s, profile.decode_s_per_seq, profile.kv_read_s_per_token,
           profile.prefill_s_per_token)  # fmt: skip
    assert got == pytest.approx(TRUE, rel=1e-6)
    assert profile.kv_capacity_blocks == 100  # the base's shape is kept
    assert "1 pauses left out" in quality


def test_too_few_steps_or_an_old_trace_is_refused_in_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              ) -> None:  # fmt: skip
    old = tmp_path / "old.jsonl"  # a trace written before steps were numbered
    old.write_text("\n".join(json.dumps({"t": i, "scheduled": 3, "tokens": 3}) for i in range(50))
                   + "\n{cut")  # fmt: skip
    with pytest.raises(SystemExit):
        main([str(old), "--out", str(tmp_path / "p.json")])
    assert "0 usable steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl")])
    assert "cannot read" in capsys.readouterr().err


def test_writes_a_profile_the_simulator_loads(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(_trace(60)) + "\n")
    out = tmp_path / "loaded.json"
    assert main([str(trace), "--out", str(out)]) == 0
    loaded = LatencyProfile.load(out)
    assert loaded.overhead_s == pytest.approx(TRUE[0], rel=1e-6)
