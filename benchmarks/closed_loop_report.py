"""The closed-loop benchmark's report: tables, target lines, the simulator scenario, the section.

Pure arithmetic over saved loads (:class:`~bench.result.BenchRun` files written by
``benchmarks/closed_loop.py``) plus the simulator; no engine. Kept apart from the measuring
script so that ``--report-only`` and the tests need nothing but the files.

Targets (issue 5), ``andes-measured`` against ``andes-inferred``:

* **QoE at the same load**: average reader-clock QoE ≥ +15% (ratio − 1) at a load.
* **Capacity at the same QoE**: for each load ``r`` above the lightest, the inferred
  configuration's average QoE ``q`` there; the highest rate ``r'`` at which the measured
  configuration still averages ``q`` (linear interpolation between its loads; when it never falls
  to ``q`` within the grid, ``r'`` is only known to be ≥ the heaviest load); target ``r'/r ≥ 1.3``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.readers import Reader
from bench.result import BenchRun
from benchmarks.engine_qoe import summaries_of
from benchmarks.record import command_line, machine_line, record
from engine.sim.report import Summary, format_table, plot_qoe_vs_rate

if TYPE_CHECKING:
    from benchmarks.closed_loop import Settings

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE_JSON = RESULTS / "cpu_smollm2_profile.json"
PLOT = RESULTS / "closed_loop.png"
SECTION = "closed-loop"
BASELINE, CANDIDATE = "andes-inferred", "andes-measured"
CPU_CHUNKED_PREFILL_TOKENS = 2048  # vLLM's max_num_batched_tokens for the OpenAI server on CPU

Runs = Mapping[str, Mapping[float, BenchRun]]




def rate_at_qoe(points: Sequence[tuple[float, float]], q: float) -> tuple[float | None, bool]:
    """The highest rate at which a QoE-vs-rate curve still reaches ``q``: (rate, exact?).

    ``points`` are (rate, avg QoE), interpolated linearly; the first downward crossing of ``q``
    counts. (None, True) if even the lightest load is below ``q``; (heaviest rate, False) if the
    curve never falls below ``q`` within the points (the true rate is at least that).
    """
    pts = sorted(points)
    if not pts or pts[0][1] < q:
        return None, True
    for (r0, q0), (r1, q1) in itertools.pairwise(pts):
        if q1 < q <= q0:
            return r0 + (q0 - q) / (q0 - q1) * (r1 - r0), True
    return pts[-1][0], False


def targets(rows: Sequence[Summary], baseline: str = BASELINE,
            candidate: str = CANDIDATE) -> list[str]:  # fmt: skip
    """The two target lines of issue 5, as measured (``candidate`` against ``baseline``)."""
    base = {s.rate_rps: s for s in rows if s.policy == baseline}
    cand = {s.rate_rps: s for s in rows if s.policy == candidate}
    rates = sorted(set(base) & set(cand))
    if not rates:
        return [f"- Targets: not measured — need loads of both {baseline} and {candidate}."]
    gains = []
    for r in rates:
        b, c = base[r].avg_qoe, cand[r].avg_qoe
        gains.append((r, b, c, c / b - 1 if b > 0 else math.inf))
    met = [r for r, _, _, g in gains if g >= 0.15]
    per = "; ".join(f"{r:g} req/s: {b:.3f} → {c:.3f} (**{g:+.1%}**)" for r, b, c, g in gains)
    verdict = f"met at {', '.join(f'{r:g}' for r in met)} req/s" if met else "missed at every load"
    out = [f"- Average QoE, {candidate} vs {baseline} at the same load (target ≥ +15%): {per}"
           f" — {verdict}"]  # fmt: skip
    curve = [(r, cand[r].avg_qoe) for r in rates]
    parts, met_any, open_bound = [], False, False
    for r in rates[1:]:
        q = base[r].avg_qoe
        at, exact = rate_at_qoe(curve, q)
        if at is None:
            parts.append(f"{baseline}'s {q:.3f} at {r:g} req/s: {candidate} never reaches it")
            continue
        ratio = at / r
        met_any |= ratio >= 1.3
        open_bound |= not exact and ratio < 1.3
        bound = "" if exact else "≥ "
        parts.append(f"{baseline}'s {q:.3f} at {r:g} req/s: {candidate} holds it up to"
                     f" {bound}{at:.2f} req/s → **{bound}{ratio:.2f}×**")  # fmt: skip
    if parts:
        verdict = ("met" if met_any else "not determined (beyond the heaviest load)"
                   if open_bound else "missed")  # fmt: skip
        out.append(f"- Same QoE at a higher rate (target ≥ 1.3×, interpolated between loads):"
                   f" {'; '.join(parts)} — {verdict}")  # fmt: skip
    return out


def _kind(reader: Reader) -> str:
    if reader.pauses:
        return "hides the tab"
    if not reader.misdeclared:
        return "as declared"
    slower = reader.read_tds_tok_s < reader.declared.tds_tok_s
    return "slower than declared" if slower else "faster than declared"


def by_reader(runs: Runs, readers_of: Any) -> list[str]:
    """Markdown rows: average QoE per kind of reader, per configuration and load.

    ``readers_of(rate)`` gives the readers of that load's plan."""
    kinds = ("as declared", "slower than declared", "faster than declared", "hides the tab")
    lines = ["| config | rate/s | " + " | ".join(f"{k} (n)" for k in kinds) + " |",
             "|---|---|" + "---|" * len(kinds)]  # fmt: skip
    for config, by_rate in runs.items():
        for rate in sorted(by_rate):
            readers = readers_of(rate)
            groups: dict[str, list[float]] = {k: [] for k in kinds}
            for rec in by_rate[rate].records:
                reader = readers.get(rec.req_id)
                if reader is not None:
                    groups[_kind(reader)].append(rec.qoe)
            cells = [f"{sum(v) / len(v):.3f} ({len(v)})" if v else "–" for v in groups.values()]
            lines.append(f"| {config} | {rate:g} | " + " | ".join(cells) + " |")
    return lines


def slack_lines(runs: Runs) -> list[str]:
    """What went over the slack channel, per load (evidence that the loop was closed)."""
    out = []
    for config, by_rate in runs.items():
        for rate in sorted(by_rate):
            meta = by_rate[rate].meta
            rep, eng = meta.get("reporter") or {}, meta.get("engine_slack") or {}
            if not rep.get("batches") and not eng:
                continue
            out.append(f"- {config} @ {rate:g} req/s: gateway sent {rep.get('records_sent', 0):.0f}"
                       f" records in {rep.get('frames_sent', 0):.0f} frames"
                       f" ({rep.get('dropped_batches', 0):.0f} batches dropped); the engine"
                       f" stored {eng.get('records', 0):.0f}, {eng.get('unknown', 0):.0f} for"
                       " streams it did not have")  # fmt: skip
    return out


def simulate_scenario(settings: Settings, rates: Sequence[float],
                      runs: Runs) -> tuple[list[Summary], str]:  # fmt: skip
    """The same loads and readers in the simulator: (rows, note). No rows without a profile."""
    if not PROFILE_JSON.exists():
        return [], (f"Simulator scenario skipped: no calibrated profile ({PROFILE_JSON.name}"
                    " does not exist; `python benchmarks/calibrate_cpu.py` writes it).")
    from bench.reader_slack import ReaderSlack
    from engine.policy import get_policy
    from engine.sim.profile import LatencyProfile
    from engine.sim.report import summarize
    from engine.sim.simulator import SimConfig, simulate

    e = settings.engine
    profile = dataclasses.replace(
        LatencyProfile.load(PROFILE_JSON), kv_capacity_blocks=math.ceil(e.kv_tokens / e.block_size),
        block_size=e.block_size, max_batch=e.max_num_seqs,
    )  # fmt: skip
    rows = []
    for rate in rates:
        plan = settings.plan(rate)
        readers = settings.readers_for(plan)
        counted = {rec.req_id: rec.usage_prompt_tokens for by in runs.values()
                   for rec in (by[rate].records if rate in by else [])}  # fmt: skip
        work = [dataclasses.replace(t, prompt_tokens=counted.get(t.req_id) or t.prompt_tokens)
                for t in (p.to_trace_request() for p in plan)]  # fmt: skip
        arrivals = [p.at_s for p in plan]
        for label, policy, slack in (
            ("sim fcfs", "fcfs", None), ("sim andes-inferred", "andes", None),
            ("sim andes-measured", "andes", ReaderSlack(readers, settings.slack_interval_s)),
        ):  # fmt: skip
            result = simulate(work, arrivals, get_policy(policy), profile,
                              SimConfig(chunked_prefill_tokens=CPU_CHUNKED_PREFILL_TOKENS),
                              slack_fn=slack)  # fmt: skip
            scored = []
            for r in result.requests:
                rel = [t - r.arrival_s for t in r.token_times_s]
                reader = readers[r.req_id]
                scored.append(dataclasses.replace(r, qoe=reader.score(rel,
                                                                      reader.pauses_during(rel))))
            result = dataclasses.replace(result, requests=scored, policy=label)
            rows.append(summarize(result, rate_rps=rate, arrivals="poisson"))
    return rows, f"Simulator profile: `{PROFILE_JSON.name}` ({profile.notes or profile.name})."


def report(runs: Runs, settings: Settings, rates: Sequence[float], quick: bool, write: bool,
           runs_dir: Path) -> str:  # fmt: skip
    """Print the tables and targets; record the section (and the plot) unless ``write`` is off."""
    rows = summaries_of(runs)
    if not rows:
        print(f"no saved loads with these settings under {runs_dir}: nothing to report")
        return ""
    print(format_table(rows))
    lines = targets(rows)
    for line in lines:
        print(line)
    readers_lines = by_reader(runs, lambda rate: settings.readers_for(settings.plan(rate)))
    print("\n".join(readers_lines))
    slack = slack_lines(runs)
    for line in slack or ["- no slack reports were sent (no andes-measured load)"]:
        print(line)
    sim_rows, sim_note = simulate_scenario(settings, rates, runs)
    sim_lines = (targets(sim_rows, "sim andes-inferred", "sim andes-measured")
                 if sim_rows else [])  # fmt: skip
    if sim_rows:
        print(format_table(sim_rows))
        for line in sim_lines:
            print(line)
    print(sim_note)
    failed = {(c, r): run.summary().num_errors for c, by in runs.items()
              for r, run in by.items() if run.summary().num_errors}  # fmt: skip
    mismatches = sum(run.summary().token_count_mismatches for by in runs.values()
                     for run in by.values())  # fmt: skip
    first_error = next((rec.error for by in runs.values() for run in by.values()
                        for rec in run.records if rec.error), None)  # fmt: skip
    e, rd = settings.engine, settings.readers
    body = [
        "## Closed loop: measured slack vs server-side inference (vLLM on CPU, over the gateway)"
        + (" — QUICK SMOKE RUN, not a result" if quick else ""),
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}",
        "",
        "Setup: the same requests, arrival times and readers for every configuration, each"
        " streamed over the gateway's WebSocket with client pacing (`bench/ws_client.py`)."
        " `stock` = vLLM's own scheduler; `andes-inferred` = AndesScheduler without the slack"
        " channel; `andes-measured` = AndesScheduler with the gateway reporting slack every"
        f" {settings.slack_interval_s * 1000:g} ms. Engine as in `engine-qoe`: SmolLM2-135M bf16,"
        f" KV {e.kv_tokens} tokens (block {e.block_size}), max {e.max_num_seqs} sequences"
        f"{', eager' if e.enforce_eager else ''}; the paper's trace ({Path(e.workload).name}),"
        f" prompts cut to {e.max_prompt_tokens} estimated tokens, outputs forced (ignore_eos) to"
        f" min(trace, {e.max_output_tokens}); Poisson arrivals, seed {e.seed},"
        f" {e.duration_s:g} s per load; reader pace × {e.tds_scale:g}. Readers"
        f" (`bench/readers.py`, seed {rd.seed}): {rd.misdeclared_share:.0%} read at"
        f" {rd.pace_factor[0]:g}–{rd.pace_factor[1]:g}× the declared pace,"
        f" {rd.skim_share:.0%} skim at {rd.skim_factor[0]:g}–{rd.skim_factor[1]:g}× it;"
        f" {rd.pause_share:.0%}"
        f" hide the tab {rd.pause_after_s[0]:g}–{rd.pause_after_s[1]:g} s after their first"
        f" token for {rd.pause_s[0]:g}–{rd.pause_s[1]:g} s. **QoE on each reader's clock at its"
        " own pace** (hidden time does not count); TTFT at the client; preemptions from"
        " `vllm:num_preemptions`.",
        "",
        format_table(rows, markdown=True),
        "",
        *lines,
        "",
        "Average QoE by kind of reader:",
        "",
        *readers_lines,
        "",
        "Slack channel:",
        "",
        *(slack or ["- no slack reports were sent (no andes-measured load)"]),
        "",
        "Simulator, same loads, arrivals and readers (`sim andes-measured`: the readers as the"
        " policy's client model, `bench/reader_slack.py`; same reader-clock scoring):",
        "",
        *([format_table(sim_rows, markdown=True), "", *sim_lines, ""] if sim_rows else []),
        sim_note,
        "",
        f"Failed requests: {sum(failed.values())}"
        + (f" ({', '.join(f'{c}@{r:g}: {n}' for (c, r), n in failed.items())}; first:"
           f" {first_error})" if failed else "")
        + f"; requests whose delta count differs from the engine's usage (the gateway counts one"
        f" token per non-empty engine delta): {mismatches}. Token throughput is tokens ÷ the"
        " load's span, so a configuration that defers hidden readers' streams to the end shows"
        " a longer span, not a slower engine.",
        "",
        "Raw measurements (every token's arrival and pause; kept out of git) land in"
        f" `{_rel(runs_dir)}/` on the machine that ran it; plot: ![QoE vs load]"
        f"(benchmarks/results/{PLOT.name})",
    ]  # fmt: skip
    text = "\n".join(body)
    if write:
        plot_qoe_vs_rate(rows + sim_rows, PLOT, title="closed loop: vLLM on CPU over the gateway")
        record(SECTION, text)
        print(f"recorded section {SECTION!r} of BENCHMARKS.md; plot {PLOT}")
    return text


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(RESULTS.parent.parent))
    except ValueError:
        return str(path)
