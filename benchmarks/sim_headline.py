"""The simulator's headline benchmark: ``andes`` vs ``fcfs`` on the paper's trace.

    .venv/bin/python -m benchmarks.sim_headline            # full run, records into BENCHMARKS.md

Three setups, every one on the paper's 3,000-request ShareGPT trace (the copy shipped in
``engine/sim/data/``) with the latency profiles derived in :mod:`engine.sim.profile`:

1. OPT-66B on 4×A100-80GB, Poisson arrivals — fcfs and andes at every rate (with ``--extra``, also
   lqf and round_robin at every other rate: they thrash and are slow to simulate);
2. the same with bursty arrivals (Gamma gaps, CV 3);
3. Llama-3.1-70B on 8×A100-40GB, Poisson arrivals.

The rate grid is not picked by hand: it is a fixed set of fractions of each profile's *nominal
capacity*, a back-of-the-envelope rate at which a memory-full decode batch plus the prefills keep up
with the trace's mean request (see :func:`nominal_capacity_rps`), so it runs from comfortable to
well overloaded on any profile. Paper figures (§6.2) are quoted beside the measurements as
reference points, not targets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.record import command_line, machine_line, record
from engine.sim.arrivals import ArrivalSpec, arrival_times
from engine.sim.cli import DEFAULT_TRACE
from engine.sim.profile import LatencyProfile, get_profile
from engine.sim.report import Summary, format_table, plot_qoe_vs_rate, summarize
from engine.sim.simulator import simulate
from engine.sim.workload import TraceRequest, load_workload

RESULTS = Path(__file__).resolve().parent / "results"
RATE_FRACTIONS = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0)  # of the nominal capacity
QOE_TARGET = 0.9  # "capacity" = highest rate whose average QoE stays at or above this


@dataclass(frozen=True, slots=True)
class Setup:
    key: str
    title: str
    profile: str
    arrivals: str  # "poisson" or "gamma"
    cv: float
    policies: tuple[str, ...]  # at every rate
    sparse_policies: tuple[str, ...] = ()  # at every other rate


SETUPS = (
    Setup("opt-poisson", "OPT-66B, 4×A100-80GB, Poisson", "opt-66b-4xa100-80gb", "poisson", 1.0,
          ("fcfs", "andes"), ("lqf", "round_robin")),
    Setup("opt-gamma3", "OPT-66B, 4×A100-80GB, Gamma CV 3 (bursty)", "opt-66b-4xa100-80gb",
          "gamma", 3.0, ("fcfs", "andes")),
    Setup("llama-poisson", "Llama-3.1-70B, 8×A100-40GB, Poisson", "llama-3.1-70b-8xa100-40gb",
          "poisson", 1.0, ("fcfs", "andes")),
)  # fmt: skip


def nominal_capacity_rps(profile: LatencyProfile, workload: list[TraceRequest]) -> float:
    """Requests/s a memory-full batch sustains on the workload's mean request.

    The batch holds as many mean-context requests (prompt + half the output) as the KV cache or the
    batch limit allows; each request needs ``mean_output`` decode slots in such a batch plus the
    extra time its prefill adds to one iteration of that batch.
    """
    prompt = statistics.fmean(r.prompt_tokens for r in workload)
    output = statistics.fmean(r.output_tokens for r in workload)
    ctx = prompt + output / 2
    batch = max(1, min(profile.max_batch, int(profile.kv_capacity_tokens // ctx)))
    decode = profile.decode_s(batch, int(batch * ctx))
    prefill = profile.iteration_s(batch, int(batch * ctx), int(prompt)) - decode
    return 1.0 / (output * decode / batch + prefill)


_WORKLOAD: list[TraceRequest] = []


def _init(trace: str, limit: int | None) -> None:
    global _WORKLOAD
    _WORKLOAD = load_workload(trace, limit=limit)


def _one(job: tuple[str, str, float, float, str, int]) -> tuple[Summary, float]:
    from engine.policy import get_policy

    profile_name, kind, cv, rate, policy, seed = job
    spec = ArrivalSpec(kind, rate_rps=rate, cv=cv)
    times = arrival_times(spec, len(_WORKLOAD), seed=seed)
    result = simulate(_WORKLOAD, times, get_policy(policy), get_profile(profile_name))
    label = f"gamma cv={cv:g}" if kind == "gamma" else kind
    ms_per_step = 1000 * result.policy_wall_s / max(result.iterations, 1)
    return summarize(result, rate_rps=rate, arrivals=label), ms_per_step


def crossing_rps(points: list[Summary]) -> tuple[float | None, float | None]:
    """(highest swept rate with avg QoE ≥ target, linear interpolation of where it crosses)."""
    pts = sorted(points, key=lambda s: s.rate_rps)
    ok = [s.rate_rps for s in pts if s.avg_qoe >= QOE_TARGET]
    highest = max(ok) if ok else None
    for a, b in itertools.pairwise(pts):
        if a.avg_qoe >= QOE_TARGET > b.avg_qoe:
            frac = (a.avg_qoe - QOE_TARGET) / (a.avg_qoe - b.avg_qoe)
            return highest, a.rate_rps + frac * (b.rate_rps - a.rate_rps)
    return highest, None


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "n/a"


def headline(setup: Setup, rows: list[Summary]) -> str:
    by = {(s.policy, s.rate_rps): s for s in rows}
    rates = sorted({s.rate_rps for s in rows})
    top = rates[-1]
    fcfs, andes = by[("fcfs", top)], by[("andes", top)]
    cap_f = crossing_rps([s for s in rows if s.policy == "fcfs"])
    cap_a = crossing_rps([s for s in rows if s.policy == "andes"])
    loss = [
        f"{r:g}: {1 - by[('andes', r)].throughput_tok_s / by[('fcfs', r)].throughput_tok_s:+.1%}"
        for r in rates
    ]
    fmt = lambda v: "none" if v is None else f"{v:.2f}"  # noqa: E731
    return "\n".join([
        f"- avg QoE at the highest rate ({top:g}/s): andes {andes.avg_qoe:.3f} ÷ fcfs"
        f" {fcfs.avg_qoe:.3f} = **{_ratio(andes.avg_qoe, fcfs.avg_qoe)}** (paper: up to 3.2×);"
        f" p10 QoE {andes.p10_qoe:.3f} vs {fcfs.p10_qoe:.3f}; TTFT p50 {andes.ttft_p50_s:.2f} s"
        f" vs {fcfs.ttft_p50_s:.2f} s, p99 {andes.ttft_p99_s:.0f} s vs {fcfs.ttft_p99_s:.0f} s",
        f"- capacity at avg QoE ≥ {QOE_TARGET}: highest swept rate andes {fmt(cap_a[0])} ÷ fcfs"
        f" {fmt(cap_f[0])} = **{_ratio(cap_a[0], cap_f[0])}**; interpolated crossing andes"
        f" {fmt(cap_a[1])} ÷ fcfs {fmt(cap_f[1])} = **{_ratio(cap_a[1], cap_f[1])}**"
        f" (paper: 1.2–1.6×)",
        f"- token throughput lost by andes vs fcfs, by rate: {', '.join(loss)} (paper: ≤ 10%)",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="the paper's trace file")
    parser.add_argument("--num-requests", type=int, default=None, help="first N (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="arrival seed")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="simulations run in parallel processes")  # fmt: skip
    keys = ", ".join(s.key for s in SETUPS)
    parser.add_argument("--setups", default=keys.replace(" ", ""),
                        help=f"comma-separated subset of: {keys}")  # fmt: skip
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md")
    parser.add_argument("--extra", action="store_true",
                        help="also run lqf and round_robin (OPT, every 2nd rate)")  # fmt: skip
    args = parser.parse_args(argv)

    wall0 = time.perf_counter()
    workload = load_workload(args.trace, limit=args.num_requests)
    chosen = [s for s in SETUPS if s.key in args.setups.split(",")]
    header = (
        f"Command: `{command_line()}`  \nMachine: {machine_line()}  \n"
        f"Trace: `{Path(args.trace).name}`, {len(workload)} requests (mean prompt"
        f" {statistics.fmean(r.prompt_tokens for r in workload):.0f} tokens at 4 chars/token, mean"
        f" output {statistics.fmean(r.output_tokens for r in workload):.0f}); arrival seed"
        f" {args.seed}; recompute preemption; whole prefills. Rates are fractions"
        f" {RATE_FRACTIONS} of each profile's nominal capacity (module docstring)."
    )
    sections: list[str] = []
    all_rows: list[dict[str, object]] = []
    # One setup at a time, recorded as soon as it is done, so a long run leaves results behind.
    with ProcessPoolExecutor(args.jobs, initializer=_init,
                             initargs=(args.trace, args.num_requests)) as pool:  # fmt: skip
        for setup in chosen:
            t0 = time.perf_counter()
            prof = get_profile(setup.profile)
            nominal = nominal_capacity_rps(prof, workload)
            grid = [round(nominal * f, 2) for f in RATE_FRACTIONS]
            jobs = []
            for i, rate in enumerate(grid):
                extra = setup.sparse_policies if args.extra and i % 2 == 1 else ()
                jobs += [(setup.profile, setup.arrivals, setup.cv, rate, p, args.seed)
                         for p in setup.policies + extra]  # fmt: skip
            # Longest first (andes at high rates), so the pool's workers end together.
            jobs.sort(key=lambda j: (j[4] == "fcfs", -j[3]))
            done = dict(zip(jobs, pool.map(_one, jobs), strict=True))
            rows = sorted((s for s, _ in done.values()), key=lambda s: (s.rate_rps, s.policy))
            ms = {p: statistics.fmean(m for j, (_, m) in done.items() if j[4] == p)
                  for p in sorted({s.policy for s in rows})}  # fmt: skip
            png = RESULTS / f"sim_headline_{setup.key}.png"
            plot_qoe_vs_rate(rows, png, title=setup.title)
            all_rows += [{"setup": setup.key, **asdict(s)} for s in rows]
            sections.append(
                f"### {setup.title}\n\n"
                f"Profile `{prof.name}`: {prof.kv_capacity_blocks} KV blocks ×"
                f" {prof.block_size} tokens, max batch {prof.max_batch}; decode step"
                f" {1000 * prof.decode_s(1, 500):.1f} ms at batch 1 (500 context tokens),"
                f" {1000 * prof.decode_s(200, 200 * 330):.1f} ms at batch 200 (330 each); prefill"
                f" {1000 * prof.prefill_s(160):.1f} ms for 160 tokens. Nominal capacity"
                f" {nominal:.2f} req/s; rates {grid}.\n\n"
                f"{headline(setup, rows)}\n"
                "- policy decision time in the simulator (mean per step, this shared machine): "
                + ", ".join(f"{p} {v:.2f} ms" for p, v in ms.items())
                + f"; setup wall time {time.perf_counter() - t0:.0f} s with {args.jobs} processes"
                + f"\n\n{format_table(rows, markdown=True)}\n\n"
                f"![avg QoE vs rate](benchmarks/results/{png.name})"
            )
            (RESULTS / "sim_headline.json").write_text(json.dumps(all_rows, indent=1) + "\n")
            body = "\n\n".join(
                ["## sim-headline — andes vs fcfs in the simulator", header, *sections]
            )
            print(sections[-1], flush=True)
            if not args.no_record:
                record("sim-headline", body)
    print(f"total wall time {time.perf_counter() - wall0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
