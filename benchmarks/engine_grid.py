"""The scheduler judged on a grid: stock vLLM against vLLM + Andes, side by side per point.

One command, resumable::

    python benchmarks/engine_grid.py              # the grid (~2 h on 2 idle cores)
    python benchmarks/engine_grid.py --quick      # a smoke run (~10 min), recorded as such
    python benchmarks/engine_grid.py --holdout    # the same points on the held-out workload

The grid (issue 14): two engine settings × {reader paces as in the trace, halved} × {Poisson,
bursty (Gamma gaps, CV 3)} at 2× the setting's knee, plus one load at the knee (trace paces,
Poisson) where Andes must do no harm:

* ``default`` — what ``andes engine`` starts: 1 GiB of KV cache, vLLM's chunked prefill and
  prefix caching, its default batch limit (128 sequences on the CPU build);
* ``memory-bound`` — the KV cache forced to 256 blocks × 32 tokens (8,192 tokens, ten or so of
  the trace's requests), 64 sequences: memory, not the batch, binds, as on the paper's GPUs.

The **knee** of a setting is the highest load (trace paces, Poisson) at which stock vLLM still
keeps average QoE ≥ 0.95, found once by a stock sweep (``--find-knee``, saved beside the runs)
or given (``--knee default=6,memory-bound=1.5``).

**Workload.** The paper's trace (3,000 requests) is split three ways, fixed here: requests
0–1,499 are the **tuning** part (every default of the policy was chosen on it, in the simulator,
and earlier sessions tuned on its start); 1,500–2,249 the **evaluation** part this grid draws from
(in trace order, from request 1,500); 2,250–2,999 the **held-out** part, which no tuning looks at
and which only ``--holdout`` runs. Prompts are the trace's text cut to 768 estimated tokens,
outputs forced (``ignore_eos``) to the trace's length cut to 1,024 (the model's context is 2,048),
each reader's pace declared through ``vllm_xargs`` (``andes_tds``, ``andes_ttft``).

**Each point** runs stock and Andes back to back on two engines started once per setting (the
idle one costs nothing measurable), with the same requests at the same times, for ``--duration``
seconds of arrivals (default 60) and until the last token. The load generator sends every
request when it is due and never caps concurrency (its pool is as large as the plan).

**Measured where the reader is** (every token's arrival at the client, scored with core/qoe.py):
average and p10 QoE, share ≥ 0.9, TTFT p50/p99, token throughput and wall time for the whole
load. **And where the engine is** (vLLM's own Prometheus metrics, deltas over the load): TTFT and
``request_queue_time`` p50/p99 (from histogram buckets, interpolated), preemptions, prefix-cache
hit rate (vLLM counts only first admissions there: a resumed request's hits are not in it).
With ``--trace-dir DIR`` every engine, stock included, writes each step to a trace
(``DIR/<setting>_<policy>.jsonl``; the stock engine runs vLLM's own scheduler with its steps
traced, nothing else changed): ``benchmarks/decision_trace.py`` sums each load's tokens, prefill
tokens (prompts plus every recompute a preemption caused) and preemptions, for both side by side.
Results go to section ``engine-grid`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import DEFAULT_TRACE, load_requests
from bench.client import EndpointConfig
from bench.plan import PlanConfig, PlannedRequest, build_plan
from bench.result import BenchRun
from bench.runner import RunConfig, run_load
from benchmarks.engine_metrics import EngineMetrics
from benchmarks.record import command_line, machine_line, record
from engine.sim.arrivals import ArrivalSpec

RESULTS = Path(__file__).resolve().parent / "results"
RUNS_DIR = RESULTS / "engine_grid"
SECTION = "engine-grid"
TUNE, EVAL, HOLDOUT = (0, 1500), (1500, 2250), (2250, 3000)  # the trace's parts (docstring)
READY_TIMEOUT_S = 1800.0  # compiling the model can take long on a busy machine
KNEE_QOE = 0.95  # the knee: highest load where stock keeps at least this average QoE
KNEE_RATES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)  # the knee search's loads


@dataclass(frozen=True)
class Setting:
    """An engine configuration of the grid."""

    name: str
    kv_cache_gb: float = 1.0
    num_kv_blocks: int | None = None  # forced block count (memory-bound)
    block_size: int | None = None
    max_num_seqs: int | None = None

    def engine(self, policy: str) -> Any:
        from engine.vllm.launch import EngineConfig
        from engine.vllm.settings import SchedulerSettings

        return EngineConfig(
            port=0, stock=policy == "stock", kv_cache_gb=self.kv_cache_gb,
            scheduler=SchedulerSettings(policy="fcfs" if policy == "stock" else policy),
            num_kv_blocks=self.num_kv_blocks, block_size=self.block_size,
            max_num_seqs=self.max_num_seqs,
        )  # fmt: skip


SETTINGS = {
    "default": Setting("default"),
    "memory-bound": Setting("memory-bound", num_kv_blocks=256, block_size=32, max_num_seqs=64),
}


@dataclass(frozen=True)
class Point:
    """One load of the grid."""

    key: str  # e.g. "2x-halved-gamma3"
    load: float  # multiple of the knee
    tds_scale: float  # reader pace multiplier
    arrivals: str  # "poisson" or "gamma"

    def spec(self, knee_rps: float) -> ArrivalSpec:
        rate = self.load * knee_rps
        if self.arrivals == "gamma":
            return ArrivalSpec("gamma", rate_rps=rate, cv=3.0)
        return ArrivalSpec("poisson", rate_rps=rate)


POINTS = (
    Point("knee", 1.0, 1.0, "poisson"),
    Point("2x-trace-poisson", 2.0, 1.0, "poisson"),
    Point("2x-trace-gamma3", 2.0, 1.0, "gamma"),
    Point("2x-halved-poisson", 2.0, 0.5, "poisson"),
    Point("2x-halved-gamma3", 2.0, 0.5, "gamma"),
)


@dataclass(frozen=True)
class Plan:
    """What determines a point's requests (a saved run is reused only if equal)."""

    setting: str
    point: str
    rate_rps: float
    arrivals: str
    tds_scale: float
    duration_s: float
    part: tuple[int, int]
    max_prompt_tokens: int = 768
    max_output_tokens: int = 1024
    seed: int = 0

    def requests(self) -> list[PlannedRequest]:
        workload, texts = load_requests(str(DEFAULT_TRACE), self.seed)
        workload = workload[self.part[0] : self.part[1]]
        spec = (ArrivalSpec("gamma", rate_rps=self.rate_rps, cv=3.0) if self.arrivals == "gamma"
                else ArrivalSpec("poisson", rate_rps=self.rate_rps))  # fmt: skip
        cfg = PlanConfig(arrivals=spec, duration_s=self.duration_s, seed=self.seed,
                         tds_scale=self.tds_scale, max_prompt_tokens=self.max_prompt_tokens,
                         max_output_tokens=self.max_output_tokens)  # fmt: skip
        # Never the same request twice (a repeat would be a prefix-cache hit): a load that would
        # need more than the part holds ends with the part.
        return build_plan(workload, cfg, texts)[: len(workload)]


# -- running ------------------------------------------------------------------------------------


def run_path(runs_dir: Path, plan: Plan, policy: str) -> Path:
    return runs_dir / plan.setting / f"{plan.point}_{policy}.json"


def saved(runs_dir: Path, plan: Plan, policy: str) -> BenchRun | None:
    return BenchRun.load_finished(run_path(runs_dir, plan, policy), "plan", plan)


async def _warm_up(base_url: str) -> None:
    from core.qoe import QoESpec

    warm = [PlannedRequest(f"warm-{i}", 0.0, "Hello, how are you today?", 8, 16, QoESpec())
            for i in range(4)]  # fmt: skip
    await run_load(warm, EndpointConfig(base_url, cache_salt="warm-up"), RunConfig(progress=False))


def measure(engine: Any, plan: Plan, policy: str, progress: bool) -> BenchRun:
    """One point on one engine: the load, and the engine's metrics around it."""
    requests = plan.requests()
    endpoint = EndpointConfig(engine.base_url, cache_salt=f"{policy}-{plan.point}-{time.time()}",
                              request_timeout_s=3600.0, read_timeout_s=900.0)  # fmt: skip
    before = EngineMetrics.scrape(engine.base_url)
    started = time.monotonic()
    config = RunConfig(progress=progress, label=f"{plan.setting} {plan.point} {policy}",
                       max_concurrency=max(len(requests), 1))  # fmt: skip
    run = asyncio.run(run_load(requests, endpoint, config))
    wall = time.monotonic() - started
    delta = EngineMetrics.scrape(engine.base_url).minus(before)
    options = engine.config.environment().get("ANDES_POLICY_OPTIONS") if policy != "stock" else None
    run.meta.update(policy=policy, plan=asdict(plan), wall_s=wall, engine=delta.summary(),
                    engine_command=" ".join(engine.config.command("<model>")),
                    policy_options=json.loads(options) if options else {})  # fmt: skip
    return run


def find_knee(setting: Setting, runs_dir: Path, duration_s: float, progress: bool) -> float:
    """The highest load of :data:`KNEE_RATES` at which stock keeps average QoE ≥ KNEE_QOE."""
    from engine.vllm.launch import EngineProcess

    path = runs_dir / setting.name / "knee.json"
    if path.exists():
        return float(json.loads(path.read_text())["knee_rps"])
    knee, seen = KNEE_RATES[0], {}
    engine = EngineProcess(setting.engine("stock"), log_path=runs_dir / f"knee_{setting.name}.log",
                           ready_timeout_s=READY_TIMEOUT_S)
    with engine:
        asyncio.run(_warm_up(engine.base_url))
        for rate in KNEE_RATES:
            plan = Plan(setting.name, f"knee-search-{rate:g}", rate, "poisson", 1.0, duration_s,
                        TUNE)  # fmt: skip
            q = measure(engine, plan, "stock", progress).summary().avg_qoe
            seen[rate] = q
            print(f"[knee {setting.name}] {rate:g}/s: stock avg QoE {q:.3f}", flush=True)
            if q < KNEE_QOE:
                break
            knee = rate
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"knee_rps": knee, "searched": seen, "duration_s": duration_s,
                                "part": "tuning (requests 0-1499)"}, indent=1))  # fmt: skip
    return knee


def _plans(setting: Setting, knee: float, points: Sequence[Point],
           args: argparse.Namespace) -> list[Plan]:  # fmt: skip
    part = HOLDOUT if args.holdout else EVAL
    return [Plan(setting.name, ("holdout-" if args.holdout else "") + p.key, p.load * knee,
                 p.arrivals, p.tds_scale, args.duration, part) for p in points]  # fmt: skip


def saved_points(setting: Setting, knee: float, points: Sequence[Point], args: argparse.Namespace,
                 policies: Sequence[str]) -> dict[tuple[str, str], BenchRun]:  # fmt: skip
    """The runs of ``points`` already saved (a point not yet measured is left out)."""
    return {(pl.point, pol): r for pl in _plans(setting, knee, points, args) for pol in policies
            if (r := saved(args.runs_dir, pl, pol)) is not None}  # fmt: skip


def run_setting(setting: Setting, knee: float, points: Sequence[Point], args: argparse.Namespace,
                policies: Sequence[str]) -> dict[tuple[str, str], BenchRun]:  # fmt: skip
    """Every point of one setting, the policies side by side per point on engines kept up."""
    from contextlib import ExitStack

    from engine.vllm.launch import EngineProcess

    plans = _plans(setting, knee, points, args)
    done = saved_points(setting, knee, points, args, policies)
    todo = [(pl, pol) for pl in plans for pol in policies if (pl.point, pol) not in done]
    if not todo:
        return done
    for plan in {pl for pl, _ in todo}:  # a bad workload fails here, before an engine starts
        plan.requests()
    with ExitStack() as stack:
        engines = {}
        for pol in policies:
            if any(p == pol for _, p in todo):
                log = args.runs_dir / f"engine_{setting.name}_{pol}.log"
                config = setting.engine(pol)
                if args.trace_dir is not None:
                    args.trace_dir.mkdir(parents=True, exist_ok=True)
                    trace = args.trace_dir.resolve() / f"{setting.name}_{pol}.jsonl"
                    config = config.replace(decision_log=str(trace))
                engine = stack.enter_context(EngineProcess(config, log_path=log,
                                                           ready_timeout_s=READY_TIMEOUT_S))
                asyncio.run(_warm_up(engine.base_url))
                engines[pol] = engine
                print(f"[{setting.name}] {pol} engine ready after {engine.ready_after_s:.0f} s",
                      flush=True)  # fmt: skip
        for plan, pol in todo:
            run = measure(engines[pol], plan, pol, args.progress)
            s = run.summary()
            print(f"[{setting.name}] {plan.point} {pol}: {s.num_requests} requests, avg QoE"
                  f" {s.avg_qoe:.3f}, {s.throughput_tok_s:.0f} tok/s, errors {s.num_errors},"
                  f" wall {run.meta['wall_s']:.0f} s", flush=True)  # fmt: skip
            if run.interrupted:
                raise KeyboardInterrupt
            run.save(run_path(args.runs_dir, plan, pol))
            done[(plan.point, pol)] = run
    return done


# -- the report ---------------------------------------------------------------------------------


def row(setting: str, point: str, policy: str, run: BenchRun) -> dict[str, Any]:
    s = run.summary()
    e = run.meta.get("engine", {})
    return {"setting": setting, "point": point, "policy": policy,
            "rate": run.meta["plan"]["rate_rps"], "n": s.num_requests, "errors": s.num_errors,
            "avg": s.avg_qoe, "p10": s.p10_qoe, "ge09": s.share_qoe_ge_0_9,
            "ttft50": s.ttft_p50_s, "ttft99": s.ttft_p99_s, "tput": s.throughput_tok_s,
            "wall": run.meta.get("wall_s", math.nan), **e}  # fmt: skip


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| setting | point | policy | req/s | avg QoE | p10 | ≥0.9 | TTFT p50/p99 s (client) |"
            " TTFT p50/p99 s (engine) | queue p50/p99 s | tok/s | wall s | preempt | prefix hit |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['point']} | {r['policy']} | {r['rate']:g} | {r['avg']:.3f} |"
            f" {r['p10']:.3f} | {r['ge09']:.0%} |"
            f" {_f(r['ttft50'], '.2f')} / {_f(r['ttft99'], '.1f')}"
            f" | {_f(r.get('engine_ttft_p50_s'), '.2f')} / {_f(r.get('engine_ttft_p99_s'), '.1f')}"
            f" | {_f(r.get('queue_p50_s'), '.2f')} / {_f(r.get('queue_p99_s'), '.1f')} |"
            f" {r['tput']:.0f} | {_f(r['wall'], '.0f')} | {_f(r.get('preemptions'), '.0f')} |"
            f" {_f(r.get('prefix_hit_rate'), '.1%')} |"
        )  # fmt: skip
    return "\n".join(lines)


def thirds(run: BenchRun) -> dict[str, list[float]]:
    """Where a run's QoE went: by arrival third of the load (first, middle, last), the average
    QoE, the median TTFT and the mean stall after the first token (:attr:`RequestRecord.stall_s`).
    A scheduler that starts every stream at once and then stalls them shows short TTFTs and long
    stalls; FCFS under overload shows the reverse, and a first third served perfectly."""
    span = float(run.meta["plan"]["duration_s"])
    out: dict[str, list[float]] = {"qoe": [], "ttft": [], "stall": []}
    for k in range(3):
        part = [r for r in run.records
                if k * span / 3 <= r.due_s < (k + 1) * span / 3 or (k == 2 and r.due_s >= span)]
        got = [r for r in part if r.token_times_s]
        out["qoe"].append(float(np.mean([r.qoe for r in part])) if part else math.nan)
        out["ttft"].append(float(np.median([r.ttft_s for r in got])) if got else math.nan)
        out["stall"].append(float(np.mean([r.stall_s for r in got])) if got else math.nan)
    return out


def thirds_table(results: dict[str, dict[tuple[str, str], BenchRun]]) -> str:
    lines = ["| setting | point | policy | avg QoE by arrival third | TTFT p50 s by third |"
             " stall after first token, mean s, by third |", "|" + "---|" * 6]  # fmt: skip
    for setting, by in results.items():
        for (point, pol), run in sorted(by.items()):
            t = thirds(run)
            lines.append(f"| {setting} | {point} | {pol} | "
                         + " | ".join(" / ".join(_f(x, fmt) for x in t[key])
                                      for key, fmt in (("qoe", ".3f"), ("ttft", ".1f"),
                                                       ("stall", ".1f")))
                         + " |")  # fmt: skip
    return "\n".join(lines)


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each point's targets (issue 14), as measured: andes against stock."""
    by = {(r["setting"], r["point"], r["policy"]): r for r in rows}
    out = []
    for (setting, point, policy), a in by.items():
        if policy != "andes" or (setting, point, "stock") not in by:
            continue
        s = by[(setting, point, "stock")]
        ratio = a["avg"] / s["avg"] if s["avg"] > 0 else math.inf
        need = 2.0 if s["avg"] <= 0.5 else 1.5 if s["avg"] <= 0.7 else None
        tput = a["tput"] / s["tput"] if s["tput"] > 0 else math.nan
        floor = 0.98 if setting == "default" else 0.90
        def ok(cond: bool) -> str:
            return "met" if cond else "missed"

        harm = ok(a["avg"] >= s["avg"] - 0.01)
        if need:
            qoe = f", target ≥ {need:g}×: {ok(ratio >= need)}; no harm: {harm})"
        else:
            qoe = f"; no ratio target above 0.7; no harm: {harm})"
        checks = [
            f"QoE {s['avg']:.3f} → {a['avg']:.3f} (**{ratio:.2f}×**{qoe}",
            f"throughput **{tput:.1%}** of stock (target ≥ {floor:.0%}: {ok(tput >= floor)})",
            f"TTFT p99 {s['ttft99']:.1f} → {a['ttft99']:.1f} s ({ok(a['ttft99'] <= s['ttft99'])})",
        ]
        out.append(f"- {setting} / {point}: " + "; ".join(checks))
    return out


def report(results: dict[str, dict[tuple[str, str], BenchRun]], knees: dict[str, float],
           args: argparse.Namespace) -> str:  # fmt: skip
    rows = [row(setting, point, pol, run) for setting, by in results.items()
            for (point, pol), run in sorted(by.items())]  # fmt: skip
    text = table(rows)
    lines = verdicts(rows)
    where = thirds_table(results)
    print(text)
    print("\n".join(lines))
    print(where)
    part = ("held-out part (requests 2,250–2,999)" if args.holdout
            else "evaluation part (1,500–2,249)")  # fmt: skip
    body = [
        "## engine-grid — stock vLLM vs vLLM + Andes, every regime side by side"
        + (" — QUICK SMOKE RUN, not a result" if args.quick else ""),
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}",
        "",
        f"Settings and workload as `benchmarks/engine_grid.py` documents: {part} of the paper's"
        f" trace, {args.duration:g} s of arrivals per point; knees (stock avg QoE ≥"
        f" {KNEE_QOE}): " + ", ".join(f"{k} {v:g} req/s" for k, v in knees.items()) + ".",
        "",
        text,
        "",
        *lines,
        "",
        "Where the QoE goes (`thirds()`): the requests by when they arrived in the load.",
        "",
        where,
    ]  # fmt: skip
    body_text = "\n".join(body)
    if not args.no_record:
        record(SECTION + ("-holdout" if args.holdout else ""), body_text)
    return body_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--settings", default="default,memory-bound")
    p.add_argument("--points", default=",".join(pt.key for pt in POINTS))
    p.add_argument("--policies", default="stock,andes")
    p.add_argument("--knee", default="", help="e.g. default=6,memory-bound=1.5 (else searched)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per point")
    p.add_argument("--holdout", action="store_true", help="the held-out part of the trace")
    p.add_argument("--quick", action="store_true", help="30 s of arrivals, two points")
    p.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="report the saved runs of these settings and points; run nothing")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--trace-dir", type=Path, default=None,
                   help="trace every engine step into DIR/<setting>_<policy>.jsonl (stock engines"
                        " too, with vLLM's own scheduler; benchmarks/decision_trace.py sums them)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 30.0)
        args.points = "knee,2x-trace-poisson"
        if args.runs_dir == RUNS_DIR:
            args.runs_dir = RUNS_DIR / "quick"
    try:
        settings = [SETTINGS[s] for s in args.settings.split(",")]
        points = [next(pt for pt in POINTS if pt.key == k) for k in args.points.split(",")]
        given = dict(kv.split("=") for kv in args.knee.split(",") if kv)
        knees = {s.name: float(given[s.name]) for s in settings if s.name in given}
    except (KeyError, StopIteration, ValueError) as exc:
        print(f"engine_grid.py: error: bad --settings/--points/--knee: {exc}", file=sys.stderr)
        return 2
    policies = [x for x in args.policies.split(",") if x]
    results = {}
    if args.report_only:
        for s in settings:
            knee_file = args.runs_dir / s.name / "knee.json"
            if s.name not in knees and knee_file.exists():
                knees[s.name] = float(json.loads(knee_file.read_text())["knee_rps"])
            if s.name in knees:
                results[s.name] = saved_points(s, knees[s.name], points, args, policies)
        report(results, knees, args)
        return 0
    try:
        for s in settings:
            if s.name not in knees:
                knees[s.name] = find_knee(s, args.runs_dir, args.duration, args.progress)
            results[s.name] = run_setting(s, knees[s.name], points, args, policies)
    except KeyboardInterrupt:
        print("interrupted: finished points are saved; rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    report(results, knees, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
