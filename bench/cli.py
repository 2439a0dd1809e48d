"""``andes bench``: replay a workload against an OpenAI-compatible endpoint, score QoE per request.

::

    andes bench --url http://127.0.0.1:8000 --rate 0.5,1,2 --duration 60 --tds-scale 0.25 \\
        --json runs.json --plot qoe.png

Every rate replays the same requests (from ``--skip``) at arrival times drawn with the same seed,
so rates differ only by how compressed the arrivals are. The table has one row per rate (the
simulator's columns; preemptions are not visible from the client and show as nan).

The closed loop, through the Andes gateway's WebSocket with readers who read at their own pace and
hide the tab for a while (``bench/readers.py``; QoE scored on each reader's clock)::

    andes bench --url http://127.0.0.1:8080 --transport ws --misdeclared-share 0.3 \\
        --pause-share 0.2 --rate 1,2 --duration 120 --tds-scale 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import signal
import sys
from pathlib import Path

from bench.client import API_KINDS, TRANSPORTS, EndpointConfig
from bench.errors import BenchConfigError, BenchError
from bench.plan import PlanConfig, PlannedRequest, build_plan, load_prompt_texts
from bench.readers import Reader, ReaderConfig, draw_readers
from bench.result import BenchRun, to_report_summary
from bench.runner import RunConfig, run_load
from core.cli import non_negative_int, positive_float, positive_int, share
from engine.sim.arrivals import ArrivalSpec
from engine.sim.errors import SimError
from engine.sim.workload import PAPER_TRACE, TraceRequest, load_workload, synthetic_workload

__all__ = ["DEFAULT_TRACE", "DEFAULT_URL", "add_arguments", "run"]

DEFAULT_TRACE = PAPER_TRACE
"""The paper's trace, shipped with the package (``engine/sim/data/``): the default workload."""

DEFAULT_URL = "http://127.0.0.1:8080"
"""Where ``andes serve`` (and ``andes gateway``) listen by default."""

_ARRIVAL_KINDS = ("poisson", "gamma", "burst")


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 <= LO <= HI, got {text!r}")
    return lo, hi


def _factor_pair(text: str) -> tuple[float, float]:
    lo, hi = _pair(text)
    if lo <= 0:
        raise argparse.ArgumentTypeError(f"expected pace factors > 0, got {text!r}")
    return lo, hi


def _rates(text: str) -> list[float]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated rates, got {text!r}")
    return [positive_float(p) for p in parts]


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: …)`` where a default is worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None
            or isinstance(default, bool)
            or (default == argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``andes bench``'s options on ``parser``."""
    parser.description = (
        "Replay a workload against an OpenAI-compatible streaming endpoint (open loop: requests"
        " go out when due, whatever came before), time every token's arrival at the client, and"
        " score each request's QoE against its reader's expectation (core/qoe.py). Prints a"
        " table per rate: average and p10 QoE, share with QoE >= 0.9, TTFT, token throughput."
        " With --transport ws it streams through the Andes gateway's WebSocket instead, each"
        " request read by a modelled reader (own pace, tab hidden a while): the closed loop."
    )
    parser.formatter_class = _HelpFormatter
    where = parser.add_argument_group("endpoint")
    where.add_argument("--url", default=DEFAULT_URL,
                       help="server root (or its /v1 prefix): the Andes gateway (here: where"
                            " `andes serve` listens), vLLM, any OpenAI-compatible server"
                            )  # fmt: skip
    where.add_argument("--transport", choices=TRANSPORTS, default="http",
                       help="http: SSE from any OpenAI-compatible server; ws: the Andes gateway's"
                            " WebSocket /v1/stream (needs the gateway's URL), read by each"
                            " request's reader: local pacing at its pace, acks, pause/resume"
                            )  # fmt: skip
    where.add_argument("--api", choices=API_KINDS, default=None,
                       help="which streaming API to call: /v1/completions (prompt as text) or"
                            " /v1/chat/completions (prompt as one user message); default"
                            " completions over http, chat over ws (its only one)")  # fmt: skip
    where.add_argument(
        "--model",
        default=None,
        help="the model field to send (default: the first of GET /v1/models)",
    )
    where.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    where.add_argument("--no-vllm-extras", dest="vllm_extras", action="store_false",
                       help="do not send vLLM's ignore_eos, vllm_xargs (the QoE spec for the Andes"
                            " scheduler) and continuous usage stats; for servers that reject"
                            " them (outputs may then end early and tokens are counted one per"
                            " non-empty chunk)")  # fmt: skip
    where.add_argument(
        "--qoe-field",
        action="store_true",
        help="also send the gateway's request field qoe: {ttft, tds}",
    )
    where.add_argument("--cache-salt", default=None,
                       help="vLLM prefix-cache salt, so an earlier run's prompts are not served"
                            " from cache")  # fmt: skip
    wl = parser.add_argument_group("workload")
    wl.add_argument("--workload", default=str(DEFAULT_TRACE),
                    help="the paper's trace (here: the copy shipped with Andes) or a ShareGPT JSON"
                         " file (.gz too), or 'synthetic' (seeded log-normal lengths like the"
                         " trace)")  # fmt: skip
    wl.add_argument(
        "--skip",
        type=non_negative_int,
        default=0,
        help="start this many requests into the workload",
    )
    wl.add_argument(
        "--num-requests",
        type=positive_int,
        default=None,
        help="requests per rate (default: as many as arrive within --duration)",
    )
    wl.add_argument("--duration", type=positive_float, default=None,
                    help="seconds of arrivals per rate (default 60 if --num-requests is not"
                         " given)")  # fmt: skip
    wl.add_argument("--max-prompt-tokens", type=positive_int, default=512,
                    help="cut prompts to this many estimated tokens (4 characters each) so they"
                         " fit the model's context")  # fmt: skip
    wl.add_argument(
        "--max-output-tokens",
        type=positive_int,
        default=512,
        help="force each output to min(its trace length, this) tokens",
    )
    wl.add_argument("--tds-scale", type=positive_float, default=1.0,
                    help="multiply every reader's pace (tokens/s) by this; < 1 puts a small"
                         " engine in the paper's regime of generating several times faster than"
                         " people read (see bench/plan.py)")  # fmt: skip
    rd = parser.add_argument_group(
        "readers", "who reads each stream (bench/readers.py); QoE is scored on each"
        " reader's clock at its own pace, and over ws the reader's pace and pauses reach the"
        " gateway (over http they only change the score)")  # fmt: skip
    rd.add_argument("--misdeclared-share", type=share, default=None,
                    help="share of readers whose pace is not the declared one (default 0.3 with"
                         " --transport ws, 0 over http)")  # fmt: skip
    rd.add_argument("--read-pace-factor", type=_factor_pair, default=(0.5, 0.8), metavar="LO,HI",
                    help="their actual pace is the declared one times a factor uniform in"
                         " [LO, HI] (default 0.5,0.8: slower than declared)")  # fmt: skip
    rd.add_argument("--pause-share", type=share, default=None,
                    help="share of readers who hide the tab once and come back (default 0.2 with"
                         " --transport ws, 0 over http)")  # fmt: skip
    rd.add_argument("--pause-after", type=_pair, default=(2.0, 20.0), metavar="LO,HI",
                    help="they hide it this many seconds after their first token, uniform"
                         " (default 2,20)")  # fmt: skip
    rd.add_argument("--pause-duration", type=_pair, default=(15.0, 45.0), metavar="LO,HI",
                    help="for this many seconds, uniform (default 15,45)")  # fmt: skip
    arr = parser.add_argument_group("arrivals")
    arr.add_argument(
        "--rate",
        type=_rates,
        default="1",
        help="mean request rate(s) per second, comma-separated: one run per rate",
    )
    arr.add_argument(
        "--arrivals",
        choices=_ARRIVAL_KINDS,
        default="poisson",
        help="arrival process (engine/sim/arrivals.py)",
    )
    arr.add_argument(
        "--cv",
        type=positive_float,
        default=1.0,
        help="gamma: coefficient of variation of the gaps (> 1 is bursty)",
    )
    arr.add_argument(
        "--burst-period",
        type=positive_float,
        default=1200.0,
        help="burst: cycle length in seconds (2x the mean rate for 35%% of it)",
    )
    arr.add_argument("--seed", type=int, default=0,
                     help="arrival, reader (and synthetic workload) seed")  # fmt: skip
    opts = parser.add_argument_group("run")
    opts.add_argument("--max-concurrency", type=positive_int, default=1024,
                     help="requests in flight at once; a request waiting for a slot is still"
                          " timed from its due time")  # fmt: skip
    opts.add_argument(
        "--timeout",
        type=positive_float,
        default=900.0,
        help="seconds a request may take in all before it counts as failed",
    )
    opts.add_argument(
        "--read-timeout",
        type=positive_float,
        default=120.0,
        help="seconds without a byte before a request counts as failed",
    )
    opts.add_argument("--label", default="measured", help="the policy column of the table")
    opts.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write every request's token times, QoE inputs and the summaries here",
    )
    opts.add_argument(
        "--plot", type=Path, default=None, help="save a PNG of average QoE against request rate"
    )
    opts.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    opts.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )


def load_requests(workload: str, seed: int = 0) -> tuple[list[TraceRequest], dict[str, str]]:
    """The workload's requests and their prompt texts (``synthetic``: 3,000 seeded requests)."""
    if workload == "synthetic":
        return synthetic_workload(3000, seed=seed), {}
    path = Path(workload)
    if not path.is_file():
        raise BenchConfigError(f"workload file not found: {workload!r}")
    return load_workload(path), load_prompt_texts(path)


def reader_config(args: argparse.Namespace) -> ReaderConfig | None:
    """The readers' model from the options; None when every reader reads as declared over http
    (the plain open-loop benchmark, scored exactly as before readers existed)."""
    ws = args.transport == "ws"
    misdeclared = args.misdeclared_share
    pause = args.pause_share
    misdeclared = (0.3 if ws else 0.0) if misdeclared is None else misdeclared
    pause = (0.2 if ws else 0.0) if pause is None else pause
    if not ws and misdeclared == 0 and pause == 0:
        return None
    return ReaderConfig(misdeclared_share=misdeclared, pace_factor=args.read_pace_factor,
                        pause_share=pause, pause_after_s=args.pause_after,
                        pause_s=args.pause_duration, seed=args.seed)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run ``andes bench``; one-line errors, exit status 2 on bad input, 130 on Ctrl-C."""
    try:
        return asyncio.run(_main(args))
    except (BenchError, SimError, ValueError) as exc:
        print(f"andes bench: error: {exc}", file=sys.stderr)
        return 2


async def _main(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args)
    readers_cfg = reader_config(args)
    plans = _plans(args, readers_cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        runs = await _run_plans(args, endpoint, plans, readers_cfg, stop)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    _report(args, endpoint, runs)
    if stop.is_set():
        print("andes bench: interrupted; partial results above", file=sys.stderr)
        return 130
    return 0


Plan = tuple[float, list[PlannedRequest], dict[str, Reader] | None]  # rate, requests, readers


def _endpoint(args: argparse.Namespace) -> EndpointConfig:
    if args.transport == "ws" and args.api == "completions":
        raise BenchConfigError("--transport ws streams chat completions only; drop --api"
                               " completions")  # fmt: skip
    api = args.api or ("chat" if args.transport == "ws" else "completions")
    return EndpointConfig(
        base_url=args.url, api=api, model=args.model, api_key=args.api_key,
        vllm_extras=args.vllm_extras, qoe_field=args.qoe_field, cache_salt=args.cache_salt,
        request_timeout_s=args.timeout, read_timeout_s=args.read_timeout,
        transport=args.transport,
    )  # fmt: skip


def _plans(args: argparse.Namespace, readers_cfg: ReaderConfig | None) -> list[Plan]:
    """One plan per rate, each with its readers (all built before the first request goes out)."""
    duration = args.duration if (args.duration or args.num_requests) else 60.0
    workload, texts = load_requests(args.workload, args.seed)
    plans: list[Plan] = []
    for rate in args.rate:
        spec = ArrivalSpec(kind=args.arrivals, rate_rps=rate, cv=args.cv,
                           period_s=args.burst_period)  # fmt: skip
        plan_cfg = PlanConfig(
            arrivals=spec, num_requests=args.num_requests, duration_s=duration, seed=args.seed,
            tds_scale=args.tds_scale, max_prompt_tokens=args.max_prompt_tokens,
            max_output_tokens=args.max_output_tokens, skip=args.skip,
        )  # fmt: skip
        plan = build_plan(workload, plan_cfg, texts)
        if not plan:
            raise BenchConfigError(f"no request arrives within {duration} s at rate {rate}")
        readers = None
        if readers_cfg is not None:
            readers = draw_readers(((r.req_id, r.spec) for r in plan), readers_cfg)
        plans.append((rate, plan, readers))
    return plans


def _arrivals_label(args: argparse.Namespace) -> str:
    return args.arrivals if args.arrivals != "gamma" else f"gamma cv={args.cv:g}"


async def _run_plans(args: argparse.Namespace, endpoint: EndpointConfig, plans: list[Plan],
                     readers_cfg: ReaderConfig | None,
                     stop: asyncio.Event) -> list[tuple[float, BenchRun]]:
    """Run the plans one after another until done or ``stop`` is set (Ctrl-C)."""
    runs: list[tuple[float, BenchRun]] = []
    for rate, plan, readers in plans:
        run_cfg = RunConfig(max_concurrency=args.max_concurrency, progress=args.progress,
                            label=f"rate {rate:g}/s")  # fmt: skip
        result = await run_load(plan, endpoint, run_cfg, stop, readers)
        result.meta.update(rate_rps=rate, arrivals=_arrivals_label(args),
                           tds_scale=args.tds_scale, workload=args.workload,
                           seed=args.seed)  # fmt: skip
        if readers_cfg is not None and readers is not None:
            result.meta["readers"] = {
                **dataclasses.asdict(readers_cfg),
                "misdeclared": sum(r.misdeclared for r in readers.values()),
                "pausing": sum(r.pauses for r in readers.values()),
            }
        runs.append((rate, result))
        if stop.is_set():
            break
    return runs


def _report(args: argparse.Namespace, endpoint: EndpointConfig,
            runs: list[tuple[float, BenchRun]]) -> None:
    """The table and a note per rate on stdout; the JSON and the plot where asked for."""
    from engine.sim.report import format_table, plot_qoe_vs_rate

    label = _arrivals_label(args)
    summaries = [
        to_report_summary(r.summary(), args.label, rate, label, wall_s=r.meta.get("wall_s", 0.0))
        for rate, r in runs
    ]
    print(format_table(summaries, markdown=args.markdown))
    for rate, r in runs:
        notes = _notes(r)
        if notes:
            print(f"rate {rate:g}/s: " + "; ".join(notes))
    if args.json is not None:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": [r.to_json() for _, r in runs]}) + "\n")
    if args.plot is not None:
        plot_qoe_vs_rate(summaries, args.plot, title=f"measured: {endpoint.url}")


def _notes(run: BenchRun) -> list[str]:
    """What the table does not show about one run: failures, count mismatches, the readers."""
    s = run.summary()
    notes = []
    if s.num_errors:
        first = next(rec.error for rec in run.records if rec.error)
        notes.append(f"{s.num_errors} failed (first: {first})")
    if s.token_count_mismatches:
        notes.append(f"{s.token_count_mismatches} token-count mismatches with usage")
    if "readers" in run.meta:
        rm = run.meta["readers"]
        notes.append(f"readers: {rm['misdeclared']} not at the declared pace,"
                     f" {rm['pausing']} hide the tab; QoE on the readers' clocks")  # fmt: skip
    return notes
