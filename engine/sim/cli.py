"""``andes sim``: run policies side by side over a sweep of request rates on a trace.

Example::

    andes sim --policy fcfs,andes --rate 2,4,6,8 --num-requests 1000 --plot qoe.png

Every (policy, rate) pair replays the same requests at the same arrival times (the arrivals for a
rate depend only on the rate and ``--seed``), so policies are compared on identical input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import add_deprecated_alias, positive_int
from engine.sim.arrivals import ARRIVAL_KINDS, ArrivalSpec, arrival_times
from engine.sim.errors import SimError
from engine.sim.profile import PROFILES, get_profile
from engine.sim.report import Summary, format_table, plot_qoe_vs_rate, summarize, to_json
from engine.sim.simulator import PREEMPTION_MODES, SimConfig, simulate
from engine.sim.workload import PAPER_TRACE, load_workload, synthetic_workload

__all__ = ["DEFAULT_TRACE", "add_arguments", "run"]

DEFAULT_TRACE = PAPER_TRACE
"""The paper's trace, shipped with the package (``engine/sim/data/``): the default workload."""

SYNTHETIC = "synthetic"  # the --workload value of the seeded synthetic workload (as andes bench)


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not rates or any(not (r > 0 and r != float("inf")) for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be finite numbers > 0, got {text!r}")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``andes sim``'s options on ``parser``."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Replay a workload through a virtual-time continuous-batching engine under one or more"
        " scheduling policies and a sweep of request rates; print average/p10 QoE, TTFT,"
        " throughput and preemptions per (policy, rate)."
    )
    w = parser.add_argument_group("workload")
    w.add_argument(
        "--workload",
        default=str(DEFAULT_TRACE),
        help="workload file: the Andes paper's trace (the default, shipped with Andes) or"
        " ShareGPT-format JSON (auto-detected; .gz too), or 'synthetic' for a seeded workload"
        " shaped like the paper's trace",
    )
    add_deprecated_alias(w, "--trace", "--workload", dest="workload")
    add_deprecated_alias(w, "--synthetic", "--workload synthetic", dest="workload", nargs=0,
                         const=SYNTHETIC)
    w.add_argument(
        "--num-requests",
        type=positive_int,
        default=None,
        help="use the first N requests of the trace, None = all (synthetic: N, None = 1000)",
    )
    a = parser.add_argument_group("arrivals")
    a.add_argument(
        "--arrivals",
        choices=[k for k in ARRIVAL_KINDS if k != "replay"],
        default="poisson",
        help="arrival process: poisson; gamma (gaps with coefficient of variation --cv);"
        " burst (the paper's duty cycle: 2x the mean rate for 35%% of every 20 minutes)",
    )
    a.add_argument(
        "--rate",
        type=_rates,
        default=[2.0, 4.0, 6.0, 8.0],
        help="mean request rate(s), requests/s, comma-separated for a sweep",
    )
    a.add_argument("--cv", type=float, default=3.0, help="gamma arrivals: CV of the gaps")
    a.add_argument(
        "--seed", type=int, default=0, help="seed for arrival times and the synthetic workload"
    )
    e = parser.add_argument_group("engine")
    e.add_argument(
        "--policy",
        default="fcfs",
        help="scheduling policy name(s), comma-separated, or 'all' for every registered policy",
    )
    e.add_argument(
        "--profile",
        default="opt-66b-4xa100-80gb",
        help=f"latency profile: one of {', '.join(PROFILES)}, or a JSON profile file",
    )
    e.add_argument(
        "--preemption",
        choices=PREEMPTION_MODES,
        default="recompute",
        help="how preempted requests give back KV memory",
    )
    e.add_argument(
        "--chunked-prefill-tokens",
        type=positive_int,
        default=None,
        help="per-iteration token budget for chunked prefill; None = whole prefills",
    )
    e.add_argument(
        "--dump-profile",
        action="store_true",
        help="print the profile as JSON (a template for a calibrated one) and exit",
    )
    o = parser.add_argument_group("output")
    o.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="write the summaries as JSON to PATH ('-' for stdout, table then omitted)",
    )
    o.add_argument(
        "--plot",
        metavar="PATH",
        default=None,
        help="save a PNG of average QoE vs request rate per policy to PATH",
    )
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the sweep in ``args``; 0 on success, 2 on a user error (printed as one line)."""
    try:
        return _run(args)
    except (SimError, ValueError, OSError) as exc:
        print(f"andes sim: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from engine.policy import available_policies, get_policy

    profile = get_profile(args.profile)
    if args.dump_profile:
        print(profile.to_json())
        return 0
    names = [p.strip() for p in args.policy.split(",") if p.strip()]
    if names == ["all"]:
        names = available_policies()
    for name in names:
        get_policy(name)  # fail on a bad name before any simulation runs
    if args.workload == SYNTHETIC:
        workload = synthetic_workload(args.num_requests or 1000, seed=args.seed)
    else:
        workload = load_workload(args.workload, limit=args.num_requests)
    if not workload:
        raise ValueError(f"{args.workload}: the workload has no requests")
    config = SimConfig(
        preemption=args.preemption,
        chunked_prefill_tokens=args.chunked_prefill_tokens,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    label = f"gamma cv={args.cv:g}" if args.arrivals == "gamma" else args.arrivals
    summaries: list[Summary] = []
    for rate in args.rate:
        spec = ArrivalSpec(args.arrivals, rate_rps=rate, cv=args.cv)
        times = arrival_times(spec, len(workload), seed=args.seed)
        for name in names:
            result = simulate(workload, times, get_policy(name), profile, config)
            summaries.append(summarize(result, rate_rps=rate, arrivals=label))
    if args.json == "-":
        print(to_json(summaries))
    else:
        print(f"{profile.name}, {len(workload)} requests, {label} arrivals, seed {args.seed}")
        print(format_table(summaries))
        if args.json:
            Path(args.json).write_text(to_json(summaries) + "\n")
    if args.plot:
        plot_qoe_vs_rate(
            summaries, args.plot, title=f"{profile.name}, {label}, {len(workload)} requests"
        )
    return 0
