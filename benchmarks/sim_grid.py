"""The scheduler's grid in the simulator: the engine-grid points on the CPU-calibrated profile,
their fidelity against the real engine, and the paper's GPU setups with and without KV offload.

    python benchmarks/sim_grid.py                 # everything (~40 min on one core)
    python benchmarks/sim_grid.py --part cpu      # the CPU grid and its fidelity only
    python benchmarks/sim_grid.py --part gpu      # the GPU profiles only
    python benchmarks/sim_grid.py --part cpu \\
        --profile benchmarks/results/cpu_smollm2_loaded_profile.json
                                                  # the profile fitted to the engine's own steps
                                                  # under load (benchmarks/calibrate_steps.py)

Three tables, recorded into section ``sim-grid`` of BENCHMARKS.md:

1. **CPU grid** — every point of ``benchmarks/engine_grid.py`` (same settings, workload part,
   paces, arrivals, loads, 60 s of arrivals) on the profile fitted to vLLM on this CPU
   (``benchmarks/results/cpu_smollm2_profile.json``, ``benchmarks/calibrate_cpu.py``), with the
   setting's KV cache, block size and batch limit, chunked prefill at 2,048 tokens, fcfs (vLLM's
   own order) against andes. Knees come from the real engine's search when it has run
   (``benchmarks/results/engine_grid/<setting>/knee.json``), else from the same search here.
2. **Fidelity** — for every grid point the real engine measured, the simulator replays the
   *measured* requests (their sizes, paces and send times from the saved run) and the average
   QoE is compared (target: within 0.05 at every point).
3. **GPU profiles** — OPT-66B on 4×A100-80GB and Llama-3.1-70B on 8×A100-40GB
   (``engine/sim/profile.py``), 3,000 requests (the evaluation part four times over, as long a
   run as the paper's), Poisson arrivals at 1× and 2× the profile's nominal capacity
   (``benchmarks/sim_headline.py``), parks by recompute and by host offload (PCIe 4.0 ×16 at
   80%: the profile's ``swap_s_per_block``). Target with offload at 2×, OPT-66B: ≥ 3× fcfs's
   average QoE at ≥ 98% of its token throughput.

Workload part for tables 1 and 3: the trace's evaluation part (requests 1,500–2,249, see
engine_grid.py); the policy's defaults were chosen on the tuning part (0–1,499).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.result import BenchRun
from benchmarks import engine_grid as eg
from benchmarks.record import command_line, machine_line, record
from benchmarks.sim_headline import nominal_capacity_rps
from core.qoe import QoESpec
from engine.policy import get_policy
from engine.sim.arrivals import ArrivalSpec, arrival_times
from engine.sim.profile import LatencyProfile, get_profile
from engine.sim.simulator import SimConfig, SimResult, simulate
from engine.sim.workload import TraceRequest

PROFILE_JSON = eg.RESULTS / "cpu_smollm2_profile.json"
CHUNK = 2048  # vLLM's max_num_batched_tokens for the OpenAI server on CPU
KV_TOKENS_DEFAULT = 46_592  # what vLLM reports for 1 GiB of KV on this model (engine log)
SETTING_SHAPES = {  # (KV tokens, block size, batch limit) of engine_grid's settings
    "default": (KV_TOKENS_DEFAULT, 128, 128),  # vLLM's CPU build: 128-token blocks by default
    "memory-bound": (8192, 32, 64),
}
GPU_PROFILES = ("opt-66b-4xa100-80gb", "llama-3.1-70b-8xa100-40gb")


def cpu_profile(setting: str, path: Path = PROFILE_JSON) -> LatencyProfile:
    kv, block, batch = SETTING_SHAPES[setting]
    base = LatencyProfile.load(path)
    return dataclasses.replace(base, name=f"cpu-{setting}", kv_capacity_blocks=kv // block,
                               block_size=block, max_batch=batch)  # fmt: skip


def run(work: Sequence[TraceRequest], times: Sequence[float], policy: str,
        profile: LatencyProfile, config: SimConfig,
        options: dict[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    res = simulate(work, times, get_policy(policy, **(options or {})), profile, config)
    return summary(res)


def summary(res: SimResult) -> dict[str, float]:
    reqs = res.requests
    q = np.array([r.qoe for r in reqs])
    ttft = np.array([r.ttft_s for r in reqs])
    tokens = sum(r.output_tokens for r in reqs)
    start, end = min(r.arrival_s for r in reqs), max(r.finish_s for r in reqs)
    return {"avg": float(q.mean()), "p10": float(np.percentile(q, 10)),
            "ge09": float((q >= 0.9).mean()), "ttft50": float(np.median(ttft)),
            "ttft99": float(np.percentile(ttft, 99)), "tput": tokens / (end - start),
            "wall": end - start, "pre": sum(r.preemptions for r in reqs) / len(reqs),
            "hit": res.prefix_hit_rate, "n": len(reqs)}  # fmt: skip


def plan_workload(plan: eg.Plan) -> tuple[list[TraceRequest], list[float]]:
    reqs = plan.requests()
    return [r.to_trace_request() for r in reqs], [r.at_s for r in reqs]


def knee_of(setting: str, profile: Path = PROFILE_JSON, runs_dir: Path = eg.RUNS_DIR) -> float:
    path = runs_dir / setting / "knee.json"
    if path.exists():
        return float(json.loads(path.read_text())["knee_rps"])
    prof = cpu_profile(setting, profile)
    knee = eg.KNEE_RATES[0]
    for rate in eg.KNEE_RATES:
        plan = eg.Plan(setting, "knee-search", rate, "poisson", 1.0, 60.0, eg.TUNE)
        work, times = plan_workload(plan)
        if run(work, times, "fcfs", prof, SimConfig(chunked_prefill_tokens=CHUNK))["avg"] < 0.95:
            break
        knee = rate
    return knee


def cpu_grid(duration_s: float, part: tuple[int, int] = eg.EVAL, profile: Path = PROFILE_JSON,
             runs_dir: Path = eg.RUNS_DIR) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for setting in SETTING_SHAPES:
        knee = knee_of(setting, profile, runs_dir)
        prof = cpu_profile(setting, profile)
        for point in eg.POINTS:
            plan = eg.Plan(setting, point.key, point.load * knee, point.arrivals,
                           point.tds_scale, duration_s, part)  # fmt: skip
            work, times = plan_workload(plan)
            for policy in ("fcfs", "andes"):
                s = run(work, times, policy, prof, SimConfig(chunked_prefill_tokens=CHUNK))
                rows.append({"setting": setting, "point": point.key, "policy": policy,
                             "rate": plan.rate_rps, **s})  # fmt: skip
                print(f"[cpu] {setting} {point.key} {policy}: avg {s['avg']:.3f}"
                      f" tput {s['tput']:.0f}", flush=True)  # fmt: skip
    return rows


def fidelity(profile: Path = PROFILE_JSON, runs_dir: Path = eg.RUNS_DIR) -> list[dict[str, Any]]:
    """Every measured engine-grid run, replayed in the simulator with its own requests: their
    send times, reader paces, forced output lengths and prompts as the engine counted them
    (``usage.prompt_tokens``; the client's estimate where the engine sent none)."""
    rows = []
    for path in sorted(runs_dir.glob("*/*.json")):
        if path.name == "knee.json" or path.stem.startswith("knee-search"):  # "knee_*": a point
            continue
        try:
            measured = BenchRun.load(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        plan = measured.meta.get("plan", {})
        policy = "fcfs" if measured.meta.get("policy") == "stock" else "andes"
        setting = plan.get("setting")
        if setting not in SETTING_SHAPES:
            continue
        work = [TraceRequest(r.req_id, max(1, r.usage_prompt_tokens or r.prompt_tokens_est),
                             max(1, r.max_tokens), QoESpec(r.spec.ttft_s, r.spec.tds_tok_s))
                for r in measured.records]  # fmt: skip
        times = [r.due_s for r in measured.records]
        # The policy as the engine ran it (its options: ANDES_POLICY_OPTIONS at the time).
        options = measured.meta.get("policy_options") if policy == "andes" else None
        s = run(work, times, policy, cpu_profile(setting, profile),
                SimConfig(chunked_prefill_tokens=CHUNK), options)  # fmt: skip
        m = measured.summary()
        rows.append({"setting": setting, "point": plan.get("point"),
                     "policy": measured.meta.get("policy"), "measured": m.avg_qoe,
                     "simulated": s["avg"], "tput_m": m.throughput_tok_s,
                     "tput_s": s["tput"]})  # fmt: skip
    return rows


def gpu_grid() -> list[dict[str, Any]]:
    from engine.sim.workload import load_workload

    trace = load_workload(str(eg.DEFAULT_TRACE))
    part = trace[eg.EVAL[0] : eg.EVAL[1]]
    # As long a run as the paper's (3,000 requests), from the evaluation part: its 750 requests
    # four times over, under new ids (the simulator shares no KV between requests).
    work = [dataclasses.replace(r, req_id=f"{r.req_id}#{k}") for k in range(4) for r in part]
    rows = []
    for name in GPU_PROFILES:
        prof = get_profile(name)
        cap = nominal_capacity_rps(prof, work)
        for load in (1.0, 2.0):
            times = arrival_times(ArrivalSpec("poisson", rate_rps=load * cap), len(work), seed=0)
            for mode in ("recompute", "offload"):
                for policy in ("fcfs", "andes"):
                    s = run(work, times, policy, prof, SimConfig(preemption=mode))
                    rows.append({"profile": name, "load": load, "rate": load * cap,
                                 "mode": mode, "policy": policy, **s})  # fmt: skip
                    print(f"[gpu] {name} {load:g}x {mode} {policy}: avg {s['avg']:.3f}"
                          f" tput {s['tput']:.0f}", flush=True)  # fmt: skip
    return rows


def _pairs(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[tuple[dict, dict]]:
    def key(r: dict[str, Any], policy: str) -> tuple[Any, ...]:
        return (*(r[k] for k in keys), policy)

    by = {key(r, r["policy"]): r for r in rows}
    return [(r, by[key(r, "andes")]) for r in rows
            if r["policy"] == "fcfs" and key(r, "andes") in by]


def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def render(cpu: list[dict], fid: list[dict], gpu: list[dict]) -> str:
    out = []
    if cpu:
        out += ["### CPU grid (simulated, calibrated profile)", "",
                "| setting | point | req/s | avg QoE fcfs → andes | × | p10 | TTFT p99 s |"
                " tok/s fcfs → andes | thr. | preempt/req |", "|" + "---|" * 10]  # fmt: skip
        for f, a in _pairs(cpu, ("setting", "point")):
            out.append(
                f"| {f['setting']} | {f['point']} | {f['rate']:g} | {f['avg']:.3f} →"
                f" {a['avg']:.3f} | {a['avg'] / f['avg']:.2f} | {f['p10']:.2f} → {a['p10']:.2f}"
                f" | {f['ttft99']:.0f} → {a['ttft99']:.0f} | {f['tput']:.0f} → {a['tput']:.0f}"
                f" | {a['tput'] / f['tput']:.1%} | {f['pre']:.2f} → {a['pre']:.2f} |"
            )  # fmt: skip
    if fid:
        within = sum(abs(r["measured"] - r["simulated"]) <= 0.05 for r in fid)
        out += ["", "### Fidelity: the simulator against the real engine, same requests", "",
                f"Within 0.05 average QoE at **{within} of {len(fid)}** measured points"
                " (target: all).", "",
                "| setting | point | policy | measured | simulated | Δ | tok/s measured |"
                " simulated |", "|" + "---|" * 8]  # fmt: skip
        for r in fid:
            out.append(
                f"| {r['setting']} | {r['point']} | {r['policy']} | {r['measured']:.3f} |"
                f" {r['simulated']:.3f} | {r['simulated'] - r['measured']:+.3f} |"
                f" {r['tput_m']:.0f} | {r['tput_s']:.0f} |"
            )  # fmt: skip
    if gpu:
        out += ["", "### GPU profiles: parks by recompute and by host offload", "",
                "| profile | load | req/s | parks | avg QoE fcfs → andes | × | TTFT p99 s |"
                " tok/s fcfs → andes | thr. |", "|" + "---|" * 9]  # fmt: skip
        for f, a in _pairs(gpu, ("profile", "load", "mode")):
            out.append(
                f"| {f['profile']} | {f['load']:g}× | {f['rate']:.2f} | {f['mode']} |"
                f" {f['avg']:.3f} → {a['avg']:.3f} | {a['avg'] / f['avg']:.2f} |"
                f" {f['ttft99']:.0f} → {a['ttft99']:.0f} | {f['tput']:.0f} → {a['tput']:.0f} |"
                f" {a['tput'] / f['tput']:.1%} |"
            )  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "cpu", "gpu"), default="all")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--holdout", action="store_true",
                   help="the CPU grid on the held-out part of the trace (requests 2,250-2,999)")
    p.add_argument("--profile", type=Path, default=PROFILE_JSON,
                   help="the CPU latency profile (default: %(default)s; the one fitted to the"
                        " engine's own steps under load: benchmarks/calibrate_steps.py)")
    p.add_argument("--runs-dir", type=Path, default=eg.RUNS_DIR,
                   help="engine_grid.py's runs to replay and take knees from (default:"
                        " %(default)s)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    try:
        LatencyProfile.load(args.profile)
    except ValueError as exc:
        p.error(str(exc))
    part = eg.HOLDOUT if args.holdout else eg.EVAL
    cpu = (cpu_grid(args.duration, part, args.profile, args.runs_dir)
           if args.part in ("all", "cpu") else [])  # fmt: skip
    fid = fidelity(args.profile, args.runs_dir) if args.part in ("all", "cpu") else []
    gpu = gpu_grid() if args.part in ("all", "gpu") else []
    text = render(cpu, fid, gpu)
    print(text)
    if not args.no_record:
        body = ["## sim-grid — the grid in the simulator", "", f"Command: `{command_line()}`  ",
                f"Machine: {machine_line()}", "",
                "Setups, workload part and targets: `benchmarks/sim_grid.py`'s docstring.",
                f"CPU profile: `{args.profile.name}`"
                f" ({LatencyProfile.load(args.profile).notes or 'no notes'}).", "",
                text]  # fmt: skip
        name = "sim-grid" + ("" if args.part == "all" else f"-{args.part}")
        record(name + ("-holdout" if args.holdout else ""), "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
