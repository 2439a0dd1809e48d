"""What an engine's step trace says about each load it ran (an andes engine's, with its decisions,
or a stock one's).

::

    python benchmarks/decision_trace.py TRACE.jsonl [--gap-s 20]
    python benchmarks/decision_trace.py ANDES.jsonl --against STOCK.jsonl  # the same loads

``ANDES_DECISION_LOG`` (engine/vllm/scheduler.py) appends one JSON line per engine step; a stock
engine writes the same step fields with ``StepTraceAutoScheduler`` (``engine_grid.py
--trace-dir``). A benchmark that runs several loads on one engine writes them into one file; a
pause longer than ``--gap-s`` between two lines starts a new load. For each load this prints its
steps and span, the tokens the steps ran and how many of them were prefill (prompts, and the
recompute of every preempted request: beside the prompts' own total, what preemption cost), the
preemptions, the parks (and how many were for the running set's own growth, which the park
budget does not bound), the recompute they were priced at and the plug-in's own time, each also
as a share of the span, the mean running requests and the median step.

``--against`` sets two engines' traces of the same loads side by side (load by load, in order;
an engine's warm-up closer than ``--gap-s`` to its first load counts with it, a few tokens):
what each ran, and the engine time that work takes by the latency model the simulator was
calibrated with (``--profile``: per step, overhead + per decoding sequence + per context token
read + per prefill token), the plug-in's measured time added (its wall time; in brackets its
CPU time, which leaves out what it waited for the GIL or a core). The same requests
produce the same tokens on both, so the ratio of the two times is the token-throughput ratio the
work implies, free of how fast the machine happened to be during each run (single runs on this
machine differ by several percent in tokens per second; the work they did does not).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.calibrate_cpu import LOADED_PROFILE_JSON
from engine.sim.profile import LatencyProfile, ProfileError


def records(lines: Iterable[str], fields: Iterable[str] = ("t",)) -> list[dict[str, Any]]:
    """The trace's steps that carry ``fields`` (older engines wrote fewer), in order."""
    need = tuple(fields)
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed engine
        if isinstance(rec, dict) and all(k in rec for k in need):
            out.append(rec)
    return out


def loads(lines: Iterable[str], gap_s: float = 20.0) -> list[list[dict[str, Any]]]:
    """The trace's steps, one list per load (split where ``gap_s`` passes without a step)."""
    out: list[list[dict[str, Any]]] = []
    for prev, rec in itertools.pairwise([None, *records(lines)]):
        if prev is None or rec["t"] - prev["t"] > gap_s:
            out.append([])
        out[-1].append(rec)
    return out


def summary(load: list[dict[str, Any]]) -> dict[str, float]:
    span = load[-1]["t"] - load[0]["t"]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(load)]
    park_s = sum(r.get("park_s", 0.0) for r in load)
    policy_s = sum(r.get("policy_ms", 0.0) for r in load) / 1e3
    policy_cpu_s = sum(r.get("policy_cpu_ms", r.get("policy_ms", 0.0)) for r in load) / 1e3
    tokens = sum(r.get("tokens", 0) for r in load)
    return {"steps": len(load), "span_s": span, "tokens": tokens,
            "prefill": tokens - sum(r.get("decode", 0) for r in load),
            "preempted": sum(r.get("preempted", 0) for r in load),
            "parks": sum(r.get("park", 0) for r in load),
            "relieved": sum(r.get("relieved", 0) for r in load), "park_s": park_s,
            "park_share": park_s / span if span > 0 else 0.0, "policy_s": policy_s,
            "policy_share": policy_s / span if span > 0 else 0.0, "policy_cpu_s": policy_cpu_s,
            "running": statistics.mean(r.get("running", 0) for r in load),
            "step_s": statistics.median(gaps) if gaps else 0.0}  # fmt: skip


def work_s(load: list[dict[str, Any]], profile: LatencyProfile) -> float:
    """Engine seconds the load's steps take by ``profile``'s latency model (steps that ran
    nothing are not counted)."""
    total = 0.0
    for r in load:
        if not r.get("scheduled"):
            continue
        decode = r.get("decode", 0)
        total += (profile.overhead_s + profile.decode_s_per_seq * decode
                  + profile.kv_read_s_per_token * r.get("context", 0)
                  + profile.prefill_s_per_token * (r.get("tokens", 0) - decode))  # fmt: skip
    return total


def compare(
    ours: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]], profile: LatencyProfile
) -> list[str]:
    """The table of ``--against``: one row per load both traces have."""
    rows = ["| load | steps | tokens | prefill | preempted | plug-in s (CPU s) |"
            " modeled engine s | modeled throughput (plug-in by CPU) |",
            "|" + "---|" * 8]  # fmt: skip
    for k, (a, b) in enumerate(zip(ours, theirs, strict=False), 1):
        sa, sb = summary(a), summary(b)
        ma, mb = work_s(a, profile), work_s(b, profile)
        wa, wb = ma + sa["policy_s"], mb + sb["policy_s"]
        ca, cb = ma + sa["policy_cpu_s"], mb + sb["policy_cpu_s"]
        rows.append(
            f"| {k} | {sa['steps']} / {sb['steps']} | {sa['tokens']} / {sb['tokens']} |"
            f" {sa['prefill']} / {sb['prefill']} | {sa['preempted']} / {sb['preempted']} |"
            f" {sa['policy_s']:.1f} ({sa['policy_cpu_s']:.1f}) / {sb['policy_s']:.1f} |"
            f" {wa:.1f} / {wb:.1f} | {wb / wa:.1%} ({cb / ca:.1%}) |"
            if wa > 0 and ca > 0 else f"| {k} | (no steps) |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", type=Path)
    p.add_argument("--gap-s", type=float, default=20.0, help="a pause that starts a new load")
    p.add_argument("--against", type=Path, default=None,
                   help="another engine's trace of the same loads (e.g. stock's), side by side")
    p.add_argument("--profile", type=Path, default=LOADED_PROFILE_JSON,
                   help="the latency model for --against (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        lines = args.trace.read_text().splitlines()
        other = args.against.read_text().splitlines() if args.against else None
    except OSError as exc:
        p.error(f"cannot read {exc.filename}: {exc.strerror or exc}")
    if other is not None:
        try:
            profile = LatencyProfile.load(args.profile)
        except ProfileError as exc:  # a missing or malformed profile: one line
            p.error(str(exc))
        print(f"{args.trace.name} / {args.against.name}; modeled by {args.profile.name}")
        print("\n".join(compare(loads(lines, args.gap_s), loads(other, args.gap_s), profile)))
        return 0
    print("| load | steps | span s | tokens (prefill) | preempted | parks (for growth) |"
          " priced recompute s (share) | plug-in s (share) | running | step ms |")  # fmt: skip
    print("|" + "---|" * 10)
    for k, load in enumerate(loads(lines, args.gap_s), 1):
        s = summary(load)
        print(f"| {k} | {s['steps']} | {s['span_s']:.0f} | {s['tokens']} ({s['prefill']}) |"
              f" {s['preempted']} | {s['parks']} ({s['relieved']}) |"
              f" {s['park_s']:.1f} ({s['park_share']:.1%}) | {s['policy_s']:.1f}"
              f" ({s['policy_share']:.1%}) | {s['running']:.1f} | {s['step_s'] * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
