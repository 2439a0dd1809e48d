"""Gateway scheduling in front of engines Andes does not control: pacing only vs scheduling.

One command, resumable::

    python benchmarks/gateway_sched.py            # the full run (llama.cpp and stock vLLM)
    python benchmarks/gateway_sched.py --quick    # a smoke run (a few minutes)

For each engine — llama.cpp's server (llama-cpp-python, one slot) and stock vLLM (no Andes
plug-in), both on the bundled SmolLM2-135M — it starts the engine once and measures its saturated
service rate straight, on a burst of the workload's own requests from the development split,
prompts and forced outputs included (llama.cpp: 12 drawn at random, served one at a time;
vLLM: 48 at once). The
knee is put at half that rate, where first-come-first-served queueing starts to cost readers their
first token (an estimate from the measured rate, not a measured QoE curve: ``--load-factors`` moves
the grid). Loads run from the knee to 2× it (utilization 0.5 to 1). At each load the *same*
requests arrive at the *same* Poisson times (one seed), through an ``andes gateway`` process
started for each configuration:

* ``pacing`` — ``--no-admission --parking off --routing least_busy``: today's proxy mode, every
  request goes upstream at once and the engine's own first-come-first-served order decides;
* ``sched`` — the defaults: the gateway's QoE queue, parking by continuation, QoE routing.

Then two llama.cpp replicas behind one gateway: ``least_busy`` (pacing only, fewest in flight)
vs ``qoe`` (scheduling with QoE routing), each replica at the heaviest load factor.

Then the **seam stress**, per engine: ``--seam-requests`` short requests (prompts ≤ 96, outputs
64 tokens, readers at half their pace) arriving over 30 s, first unparked, then time-sliced
through a few upstream slots (``--max-upstream-streams``: 1 on llama.cpp, 4 on vLLM) with a low
park threshold, so streams are parked and resumed by the hundred. Each parked stream's whole text
is compared with the same request's unparked text (greedy: it must be identical); the unparked
streams of the time-sliced run are compared too, as the control — a batching engine's greedy text
can depend on its batch, and then a difference says nothing about the seam.

The load generator is ``bench/``'s open loop: every request is sent when due (no concurrency cap
below what the engine admits: ``max_concurrency`` 4,096). Outputs are forced to
``min(trace length, --max-output-tokens)`` (vLLM ``ignore_eos``; llama.cpp ``min_tokens``),
greedy (temperature 0; on llama.cpp ``repeat_penalty`` 1, the setting it can park),
readers' paces scaled by ``--tds-scale`` as in ``bench/plan.py``. QoE, TTFT (from arrival at the
gateway, queue included) and tokens are the gateway's own measurement at delivery, from the
``andes`` field of each stream's final chunk — with server pacing the client sees coalesced
frames, not tokens. The engine's side comes from vLLM's own metrics
(:mod:`benchmarks.engine_metrics`): its generated tokens per second while it had requests and
per second while the load arrived — the client's tok/s falls whenever the gateway refuses
requests, which it does by design under overload, so the engine's rate is what says whether a
configuration cost throughput — its queue's p99 and its preemptions. Seam defects: parks
whose seams failed (or could not get) the gateway's checks (``andes_gateway_seams_total``;
docs/continuation.md: the token-id echo on vLLM, re-tokenization on llama.cpp) plus parked
streams that did not get exactly their forced length.

**Held-out workload.** The trace's first half (requests 0 … N/2-1) is the development split: the
defaults above (horizon, park thresholds, loads) were chosen on it, and ``--quick`` runs on it.
The second half (requests N/2 … N-1) is held out: the full run reports on it (``--split test``)
and no tuning has looked at it.

Raw runs go to ``benchmarks/results/gateway_sched/`` (``quick/`` for smoke runs); a rerun with
the same settings reuses them, so an interrupted run resumes (``--fresh`` redoes all). The table
goes to section ``gateway-sched`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import DEFAULT_TRACE, load_requests
from bench.client import EndpointConfig
from bench.plan import PlanConfig, PlannedRequest, build_plan
from bench.result import BenchRun, RequestRecord
from bench.runner import RunConfig, run_load
from benchmarks.engine_metrics import BusyClock, EngineMetrics
from benchmarks.record import command_line, machine_line, record
from engine.sim.arrivals import ArrivalSpec

RESULTS = Path(__file__).resolve().parent / "results" / "gateway_sched"
SECTION = "gateway-sched"
CONFIGS = {
    "pacing": ("--no-admission", "--parking", "off", "--routing", "least_busy"),
    "sched": ("--admission", "--parking", "auto", "--routing", "qoe"),
}
REPLICA_CONFIGS = {"least_busy": CONFIGS["pacing"], "qoe": CONFIGS["sched"]}
# The seam stress: few slots and a low park threshold, so streams are time-sliced — parked and
# resumed over and over — against the same requests unparked.
STRESS_CONFIGS = {
    "unparked": CONFIGS["pacing"],
    "time-sliced": ("--admission", "--parking", "text", "--max-upstream-streams", "{slots}",
                    "--park-min-slack-s", "1", "--park-min-run-s", "0.3", "--park-budget", "1"),
}


@dataclass(frozen=True)
class Settings:
    """What determines a run's measurements (a saved run is reused only if equal)."""

    workload: str  # the trace file
    split: str  # "dev" (first half of the trace) or "test" (the held-out second half)
    seed: int
    duration_s: float
    tds_scale: float
    max_prompt_tokens: int
    max_output_tokens: int
    arrivals_cv: float = 1.0  # 1: Poisson; above 1: Gamma gaps of that CV (bursty)

    @property
    def arrivals(self) -> str:
        return "Poisson" if self.arrivals_cv == 1.0 else f"bursty (Gamma CV {self.arrivals_cv:g})"

    def plan(self, rate_rps: float) -> list[PlannedRequest]:
        workload, texts = load_requests(self.workload, self.seed)
        half = len(workload) // 2
        part = workload[:half] if self.split == "dev" else workload[half:]
        spec = (ArrivalSpec("poisson", rate_rps=rate_rps) if self.arrivals_cv == 1.0
                else ArrivalSpec("gamma", rate_rps=rate_rps, cv=self.arrivals_cv))
        cfg = PlanConfig(arrivals=spec,
                         duration_s=self.duration_s, seed=self.seed, tds_scale=self.tds_scale,
                         max_prompt_tokens=self.max_prompt_tokens,
                         max_output_tokens=self.max_output_tokens)
        plan = build_plan(part, cfg, texts)
        if len(plan) > len(part):
            raise SystemExit("the plan would reuse requests across the split; shorten it")
        return plan


# -- engines --


@dataclass
class Engine:
    kind: str
    base_urls: list[str]
    model: str
    vllm_extras: bool
    extra_fields: tuple[tuple[str, Any], ...]


REPORT_ONLY = False  # --report-only: saved runs only, no engine started


@contextlib.contextmanager
def start_engine(kind: str, replicas: int, log_dir: Path, eager: bool = False) -> Iterator[Engine]:
    if REPORT_ONLY:
        yield Engine(kind, [], "", kind != "llama_cpp", ())
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    if kind == "llama_cpp":
        from engine.llamacpp.launch import LlamaCppConfig, LlamaCppProcess

        procs = [LlamaCppProcess(LlamaCppConfig(port=0), log_path=log_dir / f"llama{i}.log")
                 for i in range(replicas)]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.wait_ready(300)
            yield Engine(kind, [p.base_url for p in procs], procs[0].model_path, False,
                         (("min_tokens", lambda r: r.max_tokens), ("repeat_penalty", 1.0)))
        finally:
            for p in procs:
                p.stop()
        return
    from engine.vllm.launch import EngineConfig, EngineProcess

    config = EngineConfig(port=0, stock=True, max_model_len=2048, block_size=32,
                          num_kv_blocks=256, max_num_seqs=64, enforce_eager=eager)
    with EngineProcess(config, log_path=log_dir / "vllm.log") as proc:
        yield Engine(kind, [proc.base_url], "smollm2-135m-instruct", True, ())


def _post(url: str, body: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def saturation_rps(engine: Engine, settings: Settings) -> tuple[float, float]:
    """The engine's saturated service rate, requests/s, and its token rate, measured straight
    (no gateway) on requests of the workload itself — prompts included, so the prefill a real
    request costs counts (a one-line prompt would make a one-thread llama.cpp look several times
    faster than it serves the trace). A burst of requests from the development split (never the
    held-out one) sent at once; llama.cpp's server runs them one at a time, vLLM batches them."""
    dev = dataclasses.replace(settings, split="dev")
    n = 12 if engine.kind == "llama_cpp" else 48
    pool = dataclasses.replace(dev, duration_s=max(dev.duration_s, 120.0)).plan(1.0)
    sample = random.Random(settings.seed).sample(pool, min(n, len(pool)))
    base = engine.base_urls[0] + "/v1/completions"

    def body(r: PlannedRequest) -> dict[str, Any]:
        out: dict[str, Any] = {"model": engine.model, "prompt": r.prompt, "temperature": 0,
                               "max_tokens": r.max_tokens}
        if engine.kind == "llama_cpp":
            out.update(min_tokens=r.max_tokens, repeat_penalty=1.0)
        else:
            out.update(ignore_eos=True)
        return out

    _post(base, dict(body(sample[0]), max_tokens=8, min_tokens=0) if engine.kind == "llama_cpp"
          else dict(body(sample[0]), max_tokens=8))  # warm-up

    async def burst() -> float:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(None, _post, base, body(r)) for r in sample))
        return time.perf_counter() - t0

    elapsed = asyncio.run(burst())
    return len(sample) / elapsed, sum(r.max_tokens for r in sample) / elapsed


# -- one configuration at one load --


@contextlib.contextmanager
def gateway(upstreams: Sequence[str], args: Sequence[str], log: Path) -> Iterator[str]:
    cmd = [sys.executable, "-m", "andes", "gateway", "--port", "0",
           *(a for u in upstreams for a in ("--upstream", u)), *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        # No slack channel: these engines have no receiver for it.
        env = {**os.environ, "ANDES_GATEWAY_SLACK_DISCOVERY": "0"}
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=out, text=True,
                                start_new_session=True, env=env)
        try:
            assert proc.stderr is not None
            url = None
            deadline = time.monotonic() + 60
            while url is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line and proc.poll() is not None:
                    raise SystemExit(f"the gateway exited: {cmd}")
                out.write(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    url = m.group(1)
            if url is None:
                raise SystemExit("the gateway did not start")
            # Keep draining its log (a line per stream): a full pipe would block the gateway.
            threading.Thread(target=_copy, args=(proc.stderr, out), daemon=True).start()
            _wait_probed(url)
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _copy(src: Any, dst: Any) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in src:
            dst.write(line)


def _wait_probed(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                ups = json.loads(resp.read())["upstreams"]
            if all(u.get("probe", "not probed") != "not probed" for u in ups):
                return
        time.sleep(0.5)


def run_path(runs_dir: Path, name: str, rate: float) -> Path:
    return runs_dir / f"{name}_rate{rate:.4g}.json"


def measure(engine: Engine, name: str, args: Sequence[str], rate: float, settings: Settings,
            runs_dir: Path, progress: bool) -> BenchRun:
    path = run_path(runs_dir, name, rate)
    reused = BenchRun.load_finished(path, "settings", settings)
    if reused is not None:
        print(f"[{name} @ {rate:.3g}/s] reusing {path.name}", flush=True)
        return reused
    if REPORT_ONLY:
        raise SystemExit(f"--report-only: no saved run {path.name} with these settings")
    plan = settings.plan(rate)
    before = [EngineMetrics.scrape(u) for u in engine.base_urls]
    with gateway(engine.base_urls, args, runs_dir / f"{name}_rate{rate:.4g}.gateway.log") as url:
        endpoint = EndpointConfig(url, model=engine.model, vllm_extras=engine.vllm_extras,
                                  qoe_field=True, cache_salt=f"{name}-{rate}-{time.time():.0f}"
                                  if engine.vllm_extras else None,
                                  extra_fields=engine.extra_fields, request_timeout_s=3600,
                                  read_timeout_s=900)
        with BusyClock(list(engine.base_urls)) as busy:
            run = asyncio.run(run_load(plan, endpoint, RunConfig(
                max_concurrency=4096, progress=progress, label=f"{name} @ {rate:.3g}/s")))
        metrics = _settled_metrics(url)
    # The engine's side (vLLM's own metrics; nothing from an engine without them): the first
    # replica's latencies, every replica's tokens and preemptions.
    deltas = [EngineMetrics.scrape(u).minus(b) for u, b in zip(engine.base_urls, before,
                                                               strict=True)]  # fmt: skip
    summaries = [d.summary() for d in deltas]
    side = dict(summaries[0])
    for key in ("generation_tokens", "prompt_tokens", "preemptions"):
        side[key] = sum(m[key] for m in summaries)
    # While the load arrives (its first eighth left out: the gateway's capacity is still
    # being learned then) both configurations face the same overload: a gap in this rate is
    # throughput the configuration cost, not requests it refused or a drain it ended sooner.
    side.update(busy_s=busy.busy_s,
                arriving_tok_s=busy.rate(settings.duration_s / 8, settings.duration_s))
    run.meta.update(engine=side)
    run.meta.update(settings=asdict(settings), rate_rps=rate, config=name, args=list(args),
                    parks=_metric(metrics, "andes_gateway_parks_total"),
                    seams_ok=_metric(metrics, 'andes_gateway_seams_total{result="ok"}'),
                    seam_defects=_metric(metrics, 'andes_gateway_seams_total{result="defect"}'),
                    seams_unchecked=_metric(metrics,
                                            'andes_gateway_seams_total{result="unchecked"}'),
                    resumes=_metric(metrics, "andes_gateway_resumes_total"),
                    resume_ttft_sum=_metric(metrics, "andes_gateway_resume_ttft_seconds_sum"),
                    resume_ttft_count=_metric(metrics, "andes_gateway_resume_ttft_seconds_count"),
                    # On a machine it shares with the engine, the gateway's CPU is the engine's.
                    gateway_cpu_s=_metric(metrics, "process_cpu_seconds_total"))
    if run.interrupted:
        raise KeyboardInterrupt
    run.save(path)
    return run


def _settled_metrics(url: str, timeout_s: float = 120.0) -> str:
    """The gateway's metrics once every park's seam check has reported (they run after each
    stream, in the background)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = _get(url + "/metrics")
        checked = _metric(text, "andes_gateway_seams_total")
        if checked >= _metric(text, "andes_gateway_parks_total") or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


# -- report --


@dataclass(frozen=True)
class Row:
    engine: str
    config: str
    rate: float
    load: str
    n: int
    errors: int
    avg_qoe: float
    p10_qoe: float
    ttft_p50_s: float
    ttft_p99_s: float
    throughput_tok_s: float
    parks: int
    resumes: int
    seam_defects: int
    # Parked streams whose whole text differs from the same request's unparked run (the
    # pacing-only run of the same load), and, as the control, unparked streams that differ too
    # (a batching engine's greedy text may depend on its batch: then a difference is not the seam).
    parked_streams: int
    parked_text_diff: int
    control_text_diff: str
    resume_ttft_s: float
    queue_wait_mean_s: float
    queue_wait_p99_s: float
    # The engine's side, from vLLM's metrics (nan from an engine without them): tokens it
    # generated per second it had requests and per second while the load arrived (measure()),
    # its own queue's p99 and its preemptions.
    engine_tok_s: float = math.nan
    engine_arriving_tok_s: float = math.nan
    engine_queue_p99_s: float = math.nan
    engine_preemptions: float = math.nan
    gateway_cpu_s: float = math.nan  # the gateway process's CPU seconds over the whole run


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _short(r: RequestRecord) -> bool:
    """A parked stream whose usage is not exactly its forced length (a segment cut short or run
    long). The usage, not the gateway's delivered count: that counts text deltas, and vLLM sends
    an empty delta for a token that ends inside a character (an unparked stream shows it too)."""
    g = r.gateway or {}
    return (bool(g.get("parks")) and r.error is None
            and r.usage_completion_tokens != r.max_tokens)


def text_diffs(run: BenchRun, unparked: BenchRun | None) -> tuple[int, int, str]:
    """(parked streams, parked ones whose text differs from ``unparked``'s same request, the
    control: unparked streams of ``run`` that differ, as "d/n")."""
    if unparked is None:
        return sum(bool((r.gateway or {}).get("parks")) for r in run.records), 0, "–"
    ref = {r.req_id: r.text_sha for r in unparked.records if r.ok and r.text_sha}
    parked = diff = ctl_n = ctl_diff = 0
    for r in run.records:
        if not r.ok or r.req_id not in ref:
            continue
        if (r.gateway or {}).get("parks"):
            parked += 1
            diff += r.text_sha != ref[r.req_id]
        else:
            ctl_n += 1
            ctl_diff += r.text_sha != ref[r.req_id]
    return parked, diff, f"{ctl_diff}/{ctl_n}"


def summarize(engine: str, config: str, load: str, run: BenchRun,
              unparked: BenchRun | None = None) -> Row:  # fmt: skip
    recs = run.records
    qoe = [float((r.gateway or {}).get("qoe", 0.0)) if r.error is None else 0.0 for r in recs]
    ttft = [float(r.gateway["ttft_s"]) for r in recs
            if r.gateway and r.gateway.get("ttft_s") is not None]
    waits = [float((r.gateway or {}).get("queued_s", 0.0)) for r in recs if r.gateway]
    tokens = sum(int((r.gateway or {}).get("tokens", 0)) for r in recs)
    start = min((r.due_s for r in recs), default=0.0)
    end = max((r.due_s + r.end_s for r in recs if not math.isnan(r.end_s)), default=1.0)
    m = run.meta
    cost = (m.get("resume_ttft_sum", 0.0) / m["resume_ttft_count"]
            if m.get("resume_ttft_count") else math.nan)
    return Row(engine, config, float(m["rate_rps"]), load, len(recs),
               sum(r.error is not None for r in recs),
               statistics.fmean(qoe) if qoe else math.nan, _pct(qoe, 0.10),
               _pct(ttft, 0.5), _pct(ttft, 0.99), tokens / max(end - start, 1e-9),
               int(m.get("parks", 0)), int(m.get("resumes", 0)),
               int(m.get("seam_defects", 0) + m.get("seams_unchecked", 0))
               + sum(_short(r) for r in recs), *text_diffs(run, unparked), cost,
               statistics.fmean(waits) if waits else 0.0, _pct(waits, 0.99),
               *_engine_side(m.get("engine")), float(m.get("gateway_cpu_s", math.nan)))


def _engine_side(side: dict[str, float] | None) -> tuple[float, float, float, float]:
    """(generated tokens per busy second, per second while the load arrived, queue p99 s,
    preemptions) from a run's engine meta."""
    if not side or not side.get("busy_s") or math.isnan(side.get("generation_tokens", math.nan)):
        return math.nan, math.nan, math.nan, math.nan
    return (side["generation_tokens"] / side["busy_s"], side.get("arriving_tok_s", math.nan),
            side.get("queue_p99_s", math.nan), side.get("preemptions", math.nan))  # fmt: skip


def table(rows: Sequence[Row]) -> str:
    head = ("| engine | config | load | req/s | n | err | avg QoE | p10 QoE | TTFT p50 s |"
            " TTFT p99 s | tok/s | parks | resumes | seam defects | parked streams: text ≠"
            " unparked | control: unparked ≠ | resume TTFT s | queue wait mean/p99 s |"
            " engine tok/s busy / arriving | engine queue p99 s | preemptions | gateway CPU s |")
    out = [head, "|" + "---|" * 22]
    for r in rows:
        out.append(f"| {r.engine} | {r.config} | {r.load} | {r.rate:.3g} | {r.n} | {r.errors} |"
                   f" {r.avg_qoe:.3f} | {r.p10_qoe:.3f} | {r.ttft_p50_s:.2f} |"
                   f" {r.ttft_p99_s:.2f} | {r.throughput_tok_s:.1f} | {r.parks} | {r.resumes} |"
                   f" {r.seam_defects} | {r.parked_text_diff}/{r.parked_streams} |"
                   f" {r.control_text_diff} | {r.resume_ttft_s:.3f} |"
                   f" {r.queue_wait_mean_s:.2f}/{r.queue_wait_p99_s:.2f} |"
                   f" {_num(r.engine_tok_s, 1)} / {_num(r.engine_arriving_tok_s, 1)} |"
                   f" {_num(r.engine_queue_p99_s, 2)} |"
                   f" {_num(r.engine_preemptions, 0)} | {_num(r.gateway_cpu_s, 1)} |")
    return "\n".join(out)


def _num(v: float, digits: int) -> str:
    return "–" if math.isnan(v) else f"{v:.{digits}f}"


def targets(rows: Sequence[Row], base: str, cand: str) -> list[str]:
    lines = []
    by = {(r.engine, r.config, r.load): r for r in rows}
    for (engine, config, load), b in sorted(by.items()):
        if config != base or (engine, cand, load) not in by:
            continue
        c = by[(engine, cand, load)]
        ratio = c.avg_qoe / b.avg_qoe if b.avg_qoe > 0 else math.inf
        tput = c.throughput_tok_s / b.throughput_tok_s if b.throughput_tok_s > 0 else math.nan
        qoe_t = ("target ≥ 1.5×: " + ("met" if ratio >= 1.5 else "missed")
                 if b.avg_qoe <= 0.6 else f"{base} > 0.6: no QoE target")
        busy, arriving = (c.engine_tok_s / b.engine_tok_s if b.engine_tok_s > 0 else math.nan,
                          c.engine_arriving_tok_s / b.engine_arriving_tok_s
                          if b.engine_arriving_tok_s > 0 else math.nan)  # fmt: skip
        engine_part = ("" if math.isnan(busy) else
                       f"; the engine's: {busy:.1%} while it had requests,"
                       f" {_num(arriving * 100, 1)}% while the load arrived")
        lines.append(f"- {engine} {load}: avg QoE {b.avg_qoe:.3f} → {c.avg_qoe:.3f}"
                     f" (**{ratio:.2f}×**, {qoe_t}); throughput {tput:.1%} of {base}"
                     f" (target ≥ 95%: {'met' if tput >= 0.95 else 'missed'}){engine_part}")
    return lines


def seam_lines(rows: Sequence[Row]) -> list[str]:
    parks = sum(r.parks for r in rows)
    defects = sum(r.seam_defects for r in rows)
    parked = sum(r.parked_streams for r in rows)
    diff = sum(r.parked_text_diff for r in rows)
    return [f"- Seam defects (the gateway's checks and forced lengths): **{defects}** over {parks}"
            f" parks (target 0 over ≥ 1,000"
            f"{'' if parks >= 1000 else ': too few parks in this run to judge'}); parked streams"
            f" whose whole text differs from the same request unparked: **{diff}** of {parked}"
            " (see the control column before reading a difference as a seam's)"]


def seam_stress(kind: str, settings: Settings, n: int, runs_dir: Path, progress: bool,
                eager: bool) -> list[Row]:
    """``n`` short requests arriving over 30 s with readers at half their pace, unparked and
    then time-sliced through a few upstream slots (parks by the hundred), text compared."""
    stress = dataclasses.replace(settings, duration_s=30.0, tds_scale=settings.tds_scale * 0.5,
                                 max_prompt_tokens=96, max_output_tokens=64)
    slots = 1 if kind == "llama_cpp" else 4
    rows = []
    with start_engine(kind, 1, runs_dir / "logs" / f"{kind}-stress", eager=eager) as engine:
        runs: dict[str, BenchRun] = {}
        for name, cargs in STRESS_CONFIGS.items():
            cargs = tuple(a.format(slots=slots) for a in cargs)
            runs[name] = measure(engine, f"{kind}-stress-{name}", cargs, n / 30.0, stress,
                                 runs_dir, progress)
            rows.append(summarize(kind, f"seam stress: {name}", f"{n} req / 30 s", runs[name],
                                  runs.get("unparked") if name != "unparked" else None))
            print(table([rows[-1]]).splitlines()[-1], flush=True)
    return rows


# -- main --


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="llama_cpp,stock_vllm")
    p.add_argument("--load-factors", default="1,1.5,2",
                   help="loads as multiples of the knee: '1,1.5,2' for every engine, or per engine"
                        " as 'llama_cpp=1,1.5,2;stock_vllm=1,2,4'")
    p.add_argument("--knee", default="",
                   help="knees given instead of measured, req/s: 'llama_cpp=0.07,stock_vllm=0.19'"
                        " (a run resumed after the measurement)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of arrivals per load")
    p.add_argument("--tds-scale", type=float, default=1.0)
    p.add_argument("--max-prompt-tokens", type=int, default=384)
    p.add_argument("--max-output-tokens", type=int, default=256)
    p.add_argument("--split", choices=("dev", "test"), default="test")
    p.add_argument("--arrivals-cv", type=float, default=1.0,
                   help="coefficient of variation of the arrival gaps: 1 Poisson (default), above"
                        " 1 bursty (Gamma); its runs and BENCHMARKS section are kept apart")
    p.add_argument("--workload", type=Path, default=DEFAULT_TRACE,
                   help="the paper's trace (the copy in the package)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-replicas", action="store_true", help="skip the two-replica part")
    p.add_argument("--seam-requests", default="150",
                   help="requests per engine in the seam stress: N, or per engine as"
                        " 'llama_cpp=80;stock_vllm=300' (0: skip it)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: dev split, load 1.5× the knee, 20 s, outputs ≤ 48 tokens")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="report the saved runs of these settings (give --knee); start nothing")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def report(rows: Sequence[Row], notes: Sequence[str], settings: Settings, quick: bool) -> str:
    lines = (targets(rows, "pacing", "sched") + targets(rows, "least_busy", "qoe")
             + seam_lines(rows))
    return "\n".join([
        "## Gateway scheduling in front of engines Andes does not control"
        + (" — QUICK SMOKE RUN, not a result" if quick else ""), "",
        f"Command: `{command_line()}`  ", f"Machine: {machine_line()}", "",
        f"Workload: the paper's trace, {settings.split} split"
        f" ({'held out' if settings.split == 'test' else 'development'}),"
        f" {settings.arrivals} arrivals"
        f" (seed {settings.seed}), {settings.duration_s:g} s per load, prompts ≤"
        f" {settings.max_prompt_tokens} estimated tokens, outputs forced to min(trace,"
        f" {settings.max_output_tokens}) tokens, reader pace × {settings.tds_scale:g}."
        " QoE, TTFT and tokens as the gateway measured them at delivery.", "",
        *[f"- {n}" for n in notes], "", table(rows), "", *lines])


def _options(args: argparse.Namespace, engines: Sequence[str]) -> tuple[
        dict[str, list[float]], dict[str, float], dict[str, int]]:  # fmt: skip
    """Load factors, given knees and seam-stress sizes, per engine (a one-line error if bad)."""
    try:
        factors = _per_engine(args.load_factors, engines, ";")
        knees = ({k: v[0] for k, v in _per_engine(args.knee, engines, ",").items()}
                 if args.knee else {})  # fmt: skip
        seams = {k: int(v[0]) for k, v in _per_engine(args.seam_requests, engines, ";").items()}
    except ValueError as exc:
        build_parser().error(str(exc))
    return factors, knees, seams


def _per_engine(text: str, engines: Sequence[str], sep: str) -> dict[str, list[float]]:
    """'1,2' (every engine) or 'kind=1,2;kind=3' (``sep`` between engines) → numbers per engine."""
    if "=" not in text:
        values = [float(x) for x in text.split(",") if x.strip()]
        return {kind: list(values) for kind in engines}
    out: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in text.split(sep))):
        kind, _, values = part.partition("=")
        if kind.strip() not in engines:
            raise ValueError(f"{kind.strip()!r} is not one of the engines run"
                             f" ({', '.join(engines)})")
        out[kind.strip()] = [float(x) for x in values.split(",") if x.strip()]
    missing = [e for e in engines if e not in out]
    if missing and sep == ";":
        raise ValueError(f"no load factors for {', '.join(missing)}")
    return out


def _where_recorded(args: argparse.Namespace) -> tuple[Path, str]:
    """The runs' directory and the BENCHMARKS.md section (``--quick`` also shrinks the run)."""
    runs_dir = RESULTS
    if args.quick:
        args.load_factors, runs_dir = "1.5", RESULTS / "quick"
        args.duration, args.split = min(args.duration, 20.0), "dev"
        args.max_output_tokens = min(args.max_output_tokens, 48)
        args.seam_requests = "20"
    if args.arrivals_cv <= 0:
        build_parser().error(f"--arrivals-cv must be > 0, got {args.arrivals_cv:g}")
    section = SECTION
    # Development-split runs (what tuning looks at) never replace the held-out ones.
    if args.split == "dev" and not args.quick:
        runs_dir, section = runs_dir / "dev", f"{section}-dev"
    if args.arrivals_cv == 1.0:
        return runs_dir, section
    # Bursty runs beside the Poisson ones, not over them.
    return runs_dir / f"cv{args.arrivals_cv:g}", f"{section}-cv{args.arrivals_cv:g}"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM too: the engines and gateways are stopped on the way out


def main(argv: list[str] | None = None) -> int:
    global REPORT_ONLY
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    REPORT_ONLY = args.report_only
    if REPORT_ONLY and not args.knee:
        build_parser().error("--report-only needs --knee (the knees the runs were made at)")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    runs_dir, section = _where_recorded(args)
    factors_of, knees, seam_n = _options(args, engines)
    if args.fresh and runs_dir.exists():
        for path in runs_dir.glob("*.json"):
            path.unlink()
    settings = Settings(str(args.workload), args.split, args.seed, args.duration, args.tds_scale,
                        args.max_prompt_tokens, args.max_output_tokens, args.arrivals_cv)
    rows: list[Row] = []
    notes: list[str] = []
    try:
        for kind in engines:
            factors = factors_of[kind]
            # --quick: vLLM eager (no compilation: a start in under a minute, slower steps).
            with start_engine(kind, 1, runs_dir / "logs" / kind, eager=args.quick) as engine:
                if kind in knees:
                    knee = knees[kind]
                    notes.append(f"{kind}: knee {knee:.4g} req/s (given: --knee)")
                else:
                    sat, x = saturation_rps(engine, settings)
                    knee = knees[kind] = 0.5 * sat
                    notes.append(f"{kind}: saturated straight from the engine at {sat:.3g} req/s"
                                 f" ({x:.0f} output tok/s) on development-split requests →"
                                 f" knee (half) {knee:.4g} req/s")
                print(notes[-1], flush=True)
                for f in factors:
                    runs: dict[str, BenchRun] = {}
                    for name, cargs in CONFIGS.items():
                        runs[name] = measure(engine, f"{kind}-{name}", cargs, knee * f, settings,
                                             runs_dir, args.progress)
                        rows.append(summarize(kind, name, f"{f:g}× knee", runs[name],
                                              runs.get("pacing") if name != "pacing" else None))
                        print(table([rows[-1]]).splitlines()[-1], flush=True)
        if not args.no_replicas and "llama_cpp" in engines:
            with start_engine("llama_cpp", 2, runs_dir / "logs" / "replicas") as engine:
                # Both replicas at the utilization of the heaviest single-engine load.
                factors = factors_of["llama_cpp"]
                rate = 2 * knees["llama_cpp"] * factors[-1]
                runs = {}
                for name, cargs in REPLICA_CONFIGS.items():
                    runs[name] = measure(engine, f"replicas-{name}", cargs, rate, settings,
                                         runs_dir, args.progress)
                    rows.append(summarize("2× llama_cpp", name, f"{factors[-1]:g}× knee each",
                                          runs[name], runs.get("least_busy")
                                          if name != "least_busy" else None))
                    print(table([rows[-1]]).splitlines()[-1], flush=True)
        for kind in engines:
            if seam_n.get(kind):
                rows += seam_stress(kind, settings, seam_n[kind], runs_dir, args.progress,
                                    eager=args.quick)
    except KeyboardInterrupt:
        print("interrupted: finished loads are saved; rerun the same command to resume",
              file=sys.stderr)
        return 130
    text = report(rows, notes, settings, args.quick)
    print(text)
    if not args.no_record:
        record(section, text)
        print(f"recorded section {section!r} of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
