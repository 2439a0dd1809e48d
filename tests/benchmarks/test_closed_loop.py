"""The closed-loop benchmark's pure parts (benchmarks/closed_loop*.py): settings and resumable run
files, the engine configurations, the target arithmetic and the report — no engine."""

from __future__ import annotations

import math

import pytest

from bench.readers import ReaderConfig
from bench.result import BenchRun, RequestRecord
from bench.scripted_engine import Script, ScriptedEngine
from benchmarks import closed_loop, closed_loop_report, engine_qoe
from benchmarks.closed_loop_report import rate_at_qoe, targets
from core.qoe import QoESpec
from engine.sim.profile import LatencyProfile
from engine.sim.report import Summary


def row(config: str, rate: float, q: float) -> Summary:
    nan = math.nan
    return Summary(config, "measured", "poisson", rate, 10, q, q, q, nan, nan, nan, 100.0, nan,
                   0, 0.0)  # fmt: skip


def settings(**readers) -> closed_loop.Settings:
    base = engine_qoe.Settings(workload="synthetic", skip=0, seed=0, duration_s=6.0,
                               tds_scale=0.5, max_prompt_tokens=64, max_output_tokens=24,
                               kv_tokens=2048, block_size=32, max_num_seqs=16,
                               enforce_eager=False)  # fmt: skip
    return closed_loop.Settings(base, ReaderConfig(**readers))


def test_rate_at_qoe_interpolates_and_says_when_it_is_only_a_bound() -> None:
    curve = [(1.0, 0.95), (2.0, 0.75), (3.0, 0.55)]
    assert rate_at_qoe(curve, 0.85) == (pytest.approx(1.5), True)
    assert rate_at_qoe(curve, 0.65) == (pytest.approx(2.5), True)
    assert rate_at_qoe(curve, 0.55) == (3.0, False)  # still there at the heaviest load
    assert rate_at_qoe(curve, 0.5) == (3.0, False)  # never fell that low: at least 3 req/s
    assert rate_at_qoe(curve, 0.99) == (None, True)


def test_targets_compare_measured_with_inferred_at_each_load() -> None:
    rows = [row("andes-inferred", 0.8, 0.95), row("andes-inferred", 1.8, 0.6),
            row("andes-inferred", 2.4, 0.4), row("andes-measured", 0.8, 0.96),
            row("andes-measured", 1.8, 0.75), row("andes-measured", 2.4, 0.45),
            row("stock", 2.4, 0.2)]  # fmt: skip
    same_load, capacity = targets(rows)
    assert "1.8 req/s: 0.600 → 0.750 (**+25.0%**)" in same_load
    assert "met at 1.8 req/s" in same_load  # 2.4: +12.5%, 0.8: +1%
    # Inferred's 0.6 at 1.8 req/s: measured's 0.75 → 0.45 (1.8 → 2.4 req/s) crosses it at 2.1.
    assert "holds it up to 2.10 req/s → **1.17×**" in capacity
    # Inferred's 0.4 at 2.4: measured never falls that low within the loads.
    assert "≥ 2.40 req/s → **≥ 1.00×**" in capacity and "not determined" in capacity
    (missed,) = targets([row("andes-inferred", 1, 0.5), row("andes-measured", 1, 0.52)])
    assert "missed at every load" in missed
    assert "not measured" in targets([row("stock", 1, 0.5)])[0]


def test_saved_loads_are_reused_only_with_the_same_settings(tmp_path) -> None:
    s = settings()
    run = BenchRun([RequestRecord("a", 0.0, QoESpec(), 4, 4, 0.0, [0.1, 0.2], end_s=0.3)],
                   meta={"settings": s.key()})  # fmt: skip
    run.save(closed_loop.run_path("andes-measured", 1.8, tmp_path))
    assert closed_loop.load_run("andes-measured", 1.8, s, tmp_path) is not None  # tuples → lists
    assert closed_loop.load_run("andes-measured", 1.8, settings(pause_share=0.5), tmp_path) is None
    assert closed_loop.load_run("stock", 1.8, s, tmp_path) is None
    plan = s.plan(2.0)
    assert s.readers_for(plan) == s.readers_for(s.plan(2.0))  # the same readers every time


def test_the_three_engine_configurations() -> None:
    s = settings()
    stock = closed_loop.engine_config("stock", s)
    inferred = closed_loop.engine_config("andes-inferred", s)
    measured = closed_loop.engine_config("andes-measured", s)
    assert stock.stock and stock.scheduler_cls() is None
    assert not inferred.stock and inferred.scheduler.policy == "andes"
    assert inferred.slack_port is None and measured.slack_port == 0
    assert measured.scheduler == inferred.scheduler and measured.num_kv_blocks == 2048 // 32
    with pytest.raises(ValueError, match="unknown configuration"):
        closed_loop.engine_config("fcfs", s)


def test_quick_settings_and_bad_reader_options(capsys) -> None:
    args = closed_loop.build_parser().parse_args(["--quick"])
    s, rates = closed_loop.settings_from(args)
    assert rates == [1.0, 4.0] and s.engine.duration_s == 15.0 and s.engine.enforce_eager
    assert s.engine.max_output_tokens == 48 and s.readers.pause_after_s == (1.0, 4.0)
    full, rates = closed_loop.settings_from(closed_loop.build_parser().parse_args([]))
    assert rates == [2.4, 4.8, 6.0] and full.readers == ReaderConfig(skim_share=0.2)
    assert full.engine.kv_tokens == 8192 and full.engine.max_output_tokens == 256
    with pytest.raises(SystemExit, match="pause_share must be a number within"):
        closed_loop.settings_from(closed_loop.build_parser().parse_args(["--pause-share", "2"]))
    assert closed_loop.main(["--policies", "stock,fcfs", "--report-only", "--no-record"]) == 2
    assert "unknown configuration(s) ['fcfs']" in capsys.readouterr().err


def _fake_runs(s: closed_loop.Settings, rate: float) -> dict[str, dict[float, BenchRun]]:
    plan = s.plan(rate)
    readers = s.readers_for(plan)
    runs: dict[str, dict[float, BenchRun]] = {}
    for k, config in enumerate(closed_loop.CONFIGS):
        records = []
        for p in plan:
            times = [p.spec.ttft_s * (1 + k) + i / p.spec.tds_tok_s for i in range(p.max_tokens)]
            rec = RequestRecord(p.req_id, p.at_s, p.spec, p.prompt_tokens, p.max_tokens, 0.0,
                                times, end_s=times[-1],
                                read_tds_tok_s=readers[p.req_id].read_tds_tok_s)  # fmt: skip
            records.append(rec)
        meta = {"preemptions": 3.0, "wall_s": 10.0}
        if config == "andes-measured":
            meta["reporter"] = {"batches": 50, "records_sent": 400, "frames_sent": 50}
            meta["engine_slack"] = {"records": 390, "unknown": 10}
        runs[config] = {rate: BenchRun(records, meta=meta)}
    return runs


def test_the_report_without_a_profile_skips_the_simulator(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(closed_loop_report, "PROFILE_JSON", tmp_path / "none.json")
    s = settings(misdeclared_share=0.5, pause_share=0.5)
    text = closed_loop_report.report(_fake_runs(s, 2.0), s, [2.0], quick=True, write=False,
                                     runs_dir=tmp_path)  # fmt: skip
    assert "QUICK SMOKE RUN" in text and "| andes-measured | 2 |" in text
    assert "Simulator scenario skipped: no calibrated profile" in text
    assert "gateway sent 400 records in 50 frames" in text and "stored 390" in text
    assert "slower than declared (n)" in text and "Failed requests: 0;" in text


def test_the_simulator_scenario_scores_readers_on_their_clocks(monkeypatch, tmp_path) -> None:
    profile = LatencyProfile("tiny-cpu", kv_capacity_blocks=1, block_size=32, max_batch=1,
                             overhead_s=0.02, decode_s_per_seq=0.002,
                             prefill_s_per_token=1e-4)  # fmt: skip
    path = tmp_path / "profile.json"
    path.write_text(profile.to_json())
    monkeypatch.setattr(closed_loop_report, "PROFILE_JSON", path)
    s = settings(misdeclared_share=0.5, pause_share=0.5, pause_after_s=(0.5, 1.0))
    rows, note = closed_loop_report.simulate_scenario(s, [3.0], {})
    assert [r.policy for r in rows] == ["sim fcfs", "sim andes-inferred", "sim andes-measured"]
    assert all(r.num_requests == len(s.plan(3.0)) and 0 <= r.avg_qoe <= 1 for r in rows)
    assert "tiny-cpu" in note


async def test_one_configuration_measures_its_loads_through_a_gateway(tmp_path) -> None:
    # The measuring loop end to end, with the scripted OpenAI-compatible server standing in for
    # vLLM (no preemption counter there: nan): warm-up, each load, its file, the meta.
    import types

    up = ScriptedEngine(Script(tokens=[f"w{i} " for i in range(6)], gap_s=0.01))
    await up.start()
    try:
        s = settings()
        config = closed_loop.engine_config("andes-inferred", s).replace(
            port=int(up.url.rsplit(":", 1)[1]))
        engine = types.SimpleNamespace(base_url=up.url, config=config)
        s = closed_loop.Settings(
            engine_qoe.Settings(**{**s.engine.__dict__, "duration_s": 1.0}), s.readers)
        done = await closed_loop._measure_loads("andes-inferred", engine, [4.0], s, tmp_path,
                                                progress=False)  # fmt: skip
    finally:
        await up.stop()
    run = done[4.0]
    assert run.records and all(r.ok and r.num_tokens == 6 for r in run.records)
    assert run.meta["config"] == "andes-inferred" and run.meta["settings"] == s.key()
    assert math.isnan(run.meta["preemptions"]) and run.meta["reporter"]["records_sent"] == 0
    assert closed_loop.load_run("andes-inferred", 4.0, s, tmp_path) is not None
    bodies = [r.body for r in up.records]
    assert len(bodies) == 4 + len(run.records)  # the warm-up, then the load
    assert all(b["ignore_eos"] is True and "cache_salt" in b for b in bodies)


def test_the_gateway_only_relays_and_paces_in_every_configuration() -> None:
    # The engine schedules; a gateway that queued in front of some configurations and not others
    # (admission treats an engine without the slack channel as uncontrolled) or cut streams the
    # engine holds would be measured instead of the engine's policy.
    s = settings()
    for config in closed_loop.CONFIGS:
        cfg = closed_loop.gateway_config(config, "http://127.0.0.1:1", s)
        assert cfg.admission is False and cfg.upstream_stall_timeout_s >= 3600
        assert cfg.slack_discovery is (config == "andes-measured")
