"""What an andes engine's decision trace says about each load it ran.

::

    python benchmarks/decision_trace.py TRACE.jsonl [--gap-s 20]

``ANDES_DECISION_LOG`` (engine/vllm/scheduler.py) appends one JSON line per engine step; a stock
engine writes the same step fields with ``StepTraceAutoScheduler`` (``engine_grid.py
--trace-dir``). A benchmark that runs several loads on one engine writes them into one file; a
pause longer than ``--gap-s`` between two lines starts a new load. For each load this prints its
steps and span, the tokens the steps ran and how many of them were prefill (prompts, and the
recompute of every preempted request: beside the prompts' own total, what preemption cost), the
preemptions, the parks (and how many were for the running set's own growth, which the park
budget does not bound), the recompute they were priced at and the plug-in's own time, each also
as a share of the span, the mean running requests and the median step.
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
    tokens = sum(r.get("tokens", 0) for r in load)
    return {"steps": len(load), "span_s": span, "tokens": tokens,
            "prefill": tokens - sum(r.get("decode", 0) for r in load),
            "preempted": sum(r.get("preempted", 0) for r in load),
            "parks": sum(r.get("park", 0) for r in load),
            "relieved": sum(r.get("relieved", 0) for r in load), "park_s": park_s,
            "park_share": park_s / span if span > 0 else 0.0, "policy_s": policy_s,
            "policy_share": policy_s / span if span > 0 else 0.0,
            "running": statistics.mean(r.get("running", 0) for r in load),
            "step_s": statistics.median(gaps) if gaps else 0.0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", type=Path)
    p.add_argument("--gap-s", type=float, default=20.0, help="a pause that starts a new load")
    args = p.parse_args(argv)
    try:
        lines = args.trace.read_text().splitlines()
    except OSError as exc:
        p.error(f"cannot read {args.trace}: {exc.strerror or exc}")
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
