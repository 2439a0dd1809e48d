"""benchmarks/gateway_sched.py's own rules: options per engine, and what counts as a seam defect."""

from __future__ import annotations

import itertools

import pytest

from bench.result import RequestRecord
from benchmarks.gateway_sched import _per_engine, _short
from core.qoe import QoESpec


def test_options_for_every_engine_or_per_engine() -> None:
    engines = ["llama_cpp", "stock_vllm"]
    assert _per_engine("1,2", engines, ";") == {"llama_cpp": [1.0, 2.0], "stock_vllm": [1.0, 2.0]}
    assert _per_engine("llama_cpp=1;stock_vllm=2,4", engines, ";") == {
        "llama_cpp": [1.0], "stock_vllm": [2.0, 4.0]}
    with pytest.raises(ValueError, match="not one of the engines"):
        _per_engine("sglang=1", engines, ";")
    with pytest.raises(ValueError, match="no load factors for stock_vllm"):
        _per_engine("llama_cpp=1", engines, ";")


def _record(parks: int, delivered: int, usage: int | None) -> RequestRecord:
    return RequestRecord("r", 0.0, QoESpec(1.0, 5.0), 10, 64, usage_completion_tokens=usage,
                         end_s=1.0, gateway={"parks": parks, "tokens": delivered})


def test_a_seam_defect_is_a_parked_stream_whose_usage_is_not_its_forced_length() -> None:
    # vLLM sends an empty delta for a token that ends inside a character: fewer deltas than
    # tokens, with or without a park — not a defect.
    assert not _short(_record(parks=2, delivered=62, usage=64))
    assert _short(_record(parks=2, delivered=63, usage=63))  # a token lost at a seam
    assert _short(_record(parks=1, delivered=65, usage=65))  # or repeated
    assert not _short(_record(parks=0, delivered=63, usage=63))  # never parked: not a seam's


def test_bursty_arrivals_are_gamma_gaps_recorded_apart_from_the_poisson_runs() -> None:
    from bench.cli import DEFAULT_TRACE
    from benchmarks.gateway_sched import RESULTS, SECTION, Settings, _where_recorded, build_parser

    poisson = build_parser().parse_args([])
    assert _where_recorded(poisson) == (RESULTS, SECTION)
    bursty = build_parser().parse_args(["--arrivals-cv", "3"])
    assert _where_recorded(bursty) == (RESULTS / "cv3", "gateway-sched-cv3")
    dev = build_parser().parse_args(["--split", "dev", "--arrivals-cv", "3"])
    assert _where_recorded(dev) == (RESULTS / "dev" / "cv3", "gateway-sched-dev-cv3")
    with pytest.raises(SystemExit):
        _where_recorded(build_parser().parse_args(["--arrivals-cv", "0"]))

    def gaps(cv: float) -> list[float]:
        s = Settings(str(DEFAULT_TRACE), "dev", 0, 120.0, 1.0, 384, 256, cv)
        times = [r.at_s for r in s.plan(2.0)]
        return [b - a for a, b in itertools.pairwise(times)]

    def cv_of(g: list[float]) -> float:
        mean = sum(g) / len(g)
        return (sum((x - mean) ** 2 for x in g) / len(g)) ** 0.5 / mean

    assert 0.8 < cv_of(gaps(1.0)) < 1.2 and cv_of(gaps(3.0)) > 2.0
    assert Settings("t", "dev", 0, 1.0, 1.0, 1, 1).arrivals == "Poisson"
    assert Settings("t", "dev", 0, 1.0, 1.0, 1, 1, 3.0).arrivals == "bursty (Gamma CV 3)"


def test_the_engines_side_is_in_the_row_and_the_throughput_line() -> None:
    from bench.result import BenchRun
    from benchmarks.gateway_sched import summarize, table, targets

    def run(config: str, engine: dict[str, float] | None) -> BenchRun:
        r = BenchRun(records=[_record(parks=0, delivered=64, usage=64)],
                     meta={"rate_rps": 1.0, "config": config})
        if engine is not None:
            r.meta["engine"] = engine
        return r

    side = {"generation_tokens": 3000.0, "busy_s": 10.0, "queue_p99_s": 0.5, "preemptions": 2.0,
            "arriving_tok_s": 320.0}
    base = summarize("stock_vllm", "pacing", "1× knee", run("pacing", side))
    cand = summarize("stock_vllm", "sched", "1× knee",
                     run("sched", dict(side, generation_tokens=2850.0, arriving_tok_s=288.0)))
    assert (base.engine_tok_s, base.engine_arriving_tok_s) == (300, 320)
    assert (base.engine_queue_p99_s, base.engine_preemptions) == (0.5, 2)
    assert "| 300.0 / 320.0 | 0.50 | 2 |" in table([base])
    line = targets([base, cand], "pacing", "sched")[0]
    assert "the engine's: 95.0% while it had requests, 90.0% while the load arrived" in line
    # A run from before the engine's side was measured, or an engine without vLLM's metrics.
    old = summarize("llama_cpp", "pacing", "1× knee", run("pacing", None))
    assert "| – / – | – | – |" in table([old])
    assert "while it had requests" not in targets(
        [old, summarize("llama_cpp", "sched", "1× knee", run("sched", None))], "pacing", "sched")[0]
