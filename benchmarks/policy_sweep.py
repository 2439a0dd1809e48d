"""Quick simulator sweeps of andes's options: the numbers BENCHMARKS.md quotes when it explains a
policy change. Prints only (a few seconds to a minute per line); nothing is recorded.

    python benchmarks/policy_sweep.py closed-loop --rates 4.8,6 --opts '{"min_run_s": 0}'
    python benchmarks/policy_sweep.py closed-loop --misdeclared-share 0 --pause-share 0
    python benchmarks/policy_sweep.py headline --profile llama-3.1-70b-8xa100-40gb --rate 28.01 \\
        --opts '{"min_run_s": 0}' '{"min_run_s": 5}'

``closed-loop``: the scenario of ``closed_loop.py`` in the simulator (calibrated CPU profile,
trace-estimated prompt lengths, its readers), fcfs / andes inferring / andes with the readers as its
client model, scored on the readers' clocks, with QoE per kind of reader and preemptions.
``headline``: one rate of ``sim_headline.py`` (the paper's trace, Poisson, seed 0), andes with
each ``--opts`` in turn.
``grid``: the 2x points of ``engine_grid.py`` for one setting in the simulator (the profile fitted
to the engine under load, ``sim_grid.py``'s shapes; the evaluation part of the trace unless
``--holdout``), fcfs against andes with each ``--opts``: average QoE and its ratio, token
throughput against fcfs's, preemptions per request::

    python benchmarks/policy_sweep.py grid --setting default \
        --opts '{}' '{"park_budget": 0.1}' '{"park_budget": 0.5}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reader_slack import ReaderSlack
from benchmarks import closed_loop
from benchmarks import sim_headline as sh
from benchmarks.calibrate_cpu import LOADED_PROFILE_JSON
from benchmarks.closed_loop_report import CPU_CHUNKED_PREFILL_TOKENS, PROFILE_JSON, _kind
from engine.policy import get_policy
from engine.sim.profile import LatencyProfile, get_profile
from engine.sim.simulator import SimConfig, simulate

KNEES = {"default": 4.0, "memory-bound": 1.0}  # req/s: engine_grid's knees (2026-12-03 search)


def _closed_loop(args: argparse.Namespace, opts: dict[str, object]) -> None:
    cl_args = closed_loop.build_parser().parse_args([])
    cl_args.misdeclared_share, cl_args.pause_share = args.misdeclared_share, args.pause_share
    settings, _ = closed_loop.settings_from(cl_args)
    e = settings.engine
    profile = dataclasses.replace(
        LatencyProfile.load(PROFILE_JSON), kv_capacity_blocks=math.ceil(e.kv_tokens / e.block_size),
        block_size=e.block_size, max_batch=e.max_num_seqs,
    )  # fmt: skip
    for rate in (float(x) for x in args.rates.split(",")):
        plan = settings.plan(rate)
        readers = settings.readers_for(plan)
        work, arrivals = [p.to_trace_request() for p in plan], [p.at_s for p in plan]
        for label in ("fcfs", "inferred", "measured"):
            policy = get_policy("fcfs") if label == "fcfs" else get_policy("andes", **opts)
            slack = ReaderSlack(readers, settings.slack_interval_s) if label == "measured" else None
            res = simulate(work, arrivals, policy, profile,
                           SimConfig(chunked_prefill_tokens=CPU_CHUNKED_PREFILL_TOKENS),
                           slack_fn=slack)  # fmt: skip
            kinds: dict[str, list[float]] = {}
            for r in res.requests:
                rel = [t - r.arrival_s for t in r.token_times_s]
                reader = readers[r.req_id]
                kinds.setdefault(_kind(reader), []).append(reader.score(rel,
                                                                        reader.pauses_during(rel)))
            every = [q for qs in kinds.values() for q in qs]
            by_kind = "  ".join(f"{k} {sum(v) / len(v):.3f} ({len(v)})"
                                for k, v in sorted(kinds.items()))  # fmt: skip
            pre = sum(r.preemptions for r in res.requests) / len(res.requests)
            print(f"rate {rate:g}  {label:8s}  avg QoE {sum(every) / len(every):.3f}"
                  f"  preempt/req {pre:.2f}  {by_kind}", flush=True)  # fmt: skip


def _headline(args: argparse.Namespace, all_opts: list[dict[str, object]]) -> None:
    sh._init(str(sh.DEFAULT_TRACE), None)
    work = sh._WORKLOAD
    times = sh.arrival_times(sh.ArrivalSpec("poisson", rate_rps=args.rate, cv=1.0), len(work),
                             seed=0)  # fmt: skip
    for opts in all_opts:
        res = simulate(work, times, get_policy("andes", **opts), get_profile(args.profile))
        q = sum(r.qoe for r in res.requests) / len(res.requests)
        pre = sum(r.preemptions for r in res.requests) / len(res.requests)
        print(f"{args.profile} @ {args.rate:g}/s  andes {json.dumps(opts)}: avg QoE {q:.3f}"
              f"  preempt/req {pre:.2f}", flush=True)  # fmt: skip


def _grid(args: argparse.Namespace, all_opts: list[dict[str, object]]) -> None:
    from benchmarks import engine_grid as eg
    from benchmarks import sim_grid as sg

    prof = sg.cpu_profile(args.setting, Path(args.profile))
    part = eg.HOLDOUT if args.holdout else eg.EVAL
    config = SimConfig(chunked_prefill_tokens=sg.CHUNK)
    for point in (pt for pt in eg.POINTS if pt.load > 1):
        plan = eg.Plan(args.setting, point.key, point.load * args.knee, point.arrivals,
                       point.tds_scale, args.duration, part)  # fmt: skip
        work, times = sg.plan_workload(plan)
        f = sg.run(work, times, "fcfs", prof, config)
        line = f"{args.setting} {point.key}: fcfs {f['avg']:.3f} (preempt/req {f['pre']:.2f})"
        for opts in all_opts:
            s = sg.run(work, times, "andes", prof, config, opts)
            line += (f" | andes {json.dumps(opts)} {s['avg']:.3f} ({s['avg'] / f['avg']:.2f}x),"
                     f" throughput {s['tput'] / f['tput']:.1%}, preempt/req {s['pre']:.2f}")
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("closed-loop", help="closed_loop.py's scenario in the simulator")
    c.add_argument("--rates", default="4.8,6")
    c.add_argument("--misdeclared-share", type=float, default=0.3)
    c.add_argument("--pause-share", type=float, default=0.2)
    c.add_argument("--opts", default="{}", help="JSON object of andes options")
    h = sub.add_parser("headline", help="one rate of sim_headline.py, andes per --opts")
    h.add_argument("--profile", default="llama-3.1-70b-8xa100-40gb")
    h.add_argument("--rate", type=float, default=28.01)
    h.add_argument("--opts", nargs="+", default=["{}"], help="JSON objects of andes options")
    g = sub.add_parser("grid", help="engine_grid.py's 2x points in the simulator")
    g.add_argument("--setting", choices=("default", "memory-bound"), default="default")
    g.add_argument("--knee", type=float, default=None,
                   help="req/s (default: the knee engine_grid.py uses for the setting)")
    g.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    g.add_argument("--holdout", action="store_true", help="the held-out part of the trace")
    g.add_argument("--profile", default=str(LOADED_PROFILE_JSON))
    g.add_argument("--opts", nargs="+", default=["{}"], help="JSON objects of andes options")
    args = p.parse_args(argv)
    try:
        if args.mode == "closed-loop":
            _closed_loop(args, json.loads(args.opts))
        elif args.mode == "grid":
            if args.knee is None:
                args.knee = KNEES[args.setting]
            _grid(args, [json.loads(o) for o in args.opts])
        else:
            _headline(args, [json.loads(o) for o in args.opts])
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"policy_sweep.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
