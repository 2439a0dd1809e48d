"""Fit the simulator's latency profile to the steps the real engine ran under a load.

::

    ANDES_DECISION_LOG=/tmp/trace.jsonl python benchmarks/engine_grid.py ...   # any andes load
    python benchmarks/calibrate_steps.py /tmp/trace.jsonl [more traces] [--out PROFILE.json]

``benchmarks/calibrate_cpu.py`` fits the profile from the client-side token gaps of a few streams
started together on an otherwise idle engine. Under a grid load the engine serves about a hundred
streams while its API server sends every token to the clients on the same two cores, and its
steps run longer than that profile says (2026-12-07, default setting at 8 req/s: a median step of
124 ms at 94 sequences, where the 2026-12-01 profile predicts about 96 ms; the simulator then
served 996 tok/s where the engine served 635). This fits the same linear model to the steps the
engine actually ran, from the decision trace of an andes engine (``ANDES_DECISION_LOG``, written
by engine/vllm/scheduler.py)::

    step_s = overhead_s + decode_s_per_seq · decoding + kv_read_s_per_token · context
             + prefill_s_per_token · (tokens − decoding)

A step's duration is the time from its scheduling to the next step's, for consecutive step
numbers only (a step the policy was not asked about is not traced), less the plug-in's own time in
the next step (``policy_ms``: the simulator models the engine; the policy's cost is the policy's).
Steps longer than five times the median (a pause of the whole process) are left out. The fit is
least squares with non-negative coefficients; the KV and batch shape are kept from ``--base``
(the simulator's grid sets them per setting anyway).

The profile is fitted on the andes engine's steps only; the simulator's fidelity is then judged on
the stock runs too, which no fit looked at (``benchmarks/sim_grid.py --profile``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks.calibrate_cpu import LOADED_PROFILE_JSON, PROFILE_JSON, _nnls
from benchmarks.decision_trace import records
from benchmarks.record import machine_line
from engine.sim.profile import LatencyProfile

OUTLIER = 5.0  # steps longer than this many medians are a pause, not a step
FIELDS = ("t", "step", "scheduled", "decode", "tokens", "context")


def steps(lines: Iterable[str]) -> list[tuple[float, int, int, int]]:
    """(duration s, decoding, prefill tokens, context tokens) of each step of a trace whose next
    step was traced too."""
    out = []
    for a, b in itertools.pairwise(records(lines, FIELDS)):
        if b["step"] != a["step"] + 1 or not a["scheduled"]:
            continue
        dt = b["t"] - a["t"] - b.get("policy_ms", 0.0) / 1e3
        out.append((dt, int(a["decode"]), int(a["tokens"]) - int(a["decode"]), int(a["context"])))
    return out


def fit(points: Sequence[tuple[float, int, int, int]], base: LatencyProfile,
        source: str) -> tuple[LatencyProfile, str]:  # fmt: skip
    """The fitted profile and a one-line account of the fit."""
    if len(points) < 10:
        raise ValueError(f"{len(points)} usable steps in the traces; need at least 10 (traces"
                         " written by an andes engine under load, with step numbers)")  # fmt: skip
    y = np.array([p[0] for p in points])
    keep = y <= OUTLIER * float(np.median(y))
    x = np.array([[1.0, p[1], p[3], p[2]] for p in points])[keep]
    y = y[keep]
    a, b, c, d = _nnls(x, y)
    resid = y - x @ np.array([a, b, c, d])
    profile = dataclasses.replace(
        base, name="cpu-smollm2-135m-loaded", overhead_s=float(a), decode_s_per_seq=float(b),
        kv_read_s_per_token=float(c), prefill_s_per_token=float(d),
        notes=(f"fitted by benchmarks/calibrate_steps.py on {machine_line()}: {len(y)} steps of"
               f" the real engine under load ({source})"),
    )  # fmt: skip
    quality = (f"{len(y)} steps ({int((~keep).sum())} pauses left out): median step"
               f" {np.median(y) * 1e3:.1f} ms, median |residual|"
               f" {np.median(np.abs(resid)) * 1e3:.1f} ms, mean residual"
               f" {resid.mean() * 1e3:+.2f} ms")  # fmt: skip
    return profile, quality


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("traces", nargs="+", type=Path, help="decision traces (ANDES_DECISION_LOG)")
    p.add_argument("--base", type=Path, default=PROFILE_JSON,
                   help="the profile whose KV and batch shape to keep (default: %(default)s)")
    p.add_argument("--out", type=Path, default=LOADED_PROFILE_JSON,
                   help="where to write the fitted profile (default: %(default)s)")
    args = p.parse_args(argv)
    points = []
    for path in args.traces:
        try:
            points += steps(path.read_text().splitlines())
        except OSError as exc:
            p.error(f"cannot read {path}: {exc.strerror or exc}")
    try:
        profile, quality = fit(points, LatencyProfile.load(args.base),
                               ", ".join(t.name for t in args.traces))  # fmt: skip
    except ValueError as exc:
        p.error(str(exc))
    args.out.write_text(profile.to_json() + "\n")
    print(profile.to_json())
    print(quality)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
