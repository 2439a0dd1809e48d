"""What the load generator sends, and when: a workload turned into timed, sized, scored requests.

A :class:`PlannedRequest` is one request of the run: its prompt text, how many tokens it must
produce, the reader's QoE spec it is scored (and scheduled) against, and when it is due. Plans are
built from the simulator's workloads and arrival processes (:mod:`engine.sim.workload`,
:mod:`engine.sim.arrivals`), so the simulator can replay exactly the same requests.

Fitting the paper's trace to a small model (documented choices):

* **Prompts are cut** to ``max_prompt_tokens`` estimated tokens, i.e. their first
  ``max_prompt_tokens × CHARS_PER_TOKEN`` characters (4 characters per token, the same estimate the
  simulator uses), so that every prompt plus its output fits the model's context (SmolLM2-135M
  serves 2,048 tokens here). The estimate is rough for code or non-English text; a prompt that is
  still too long is rejected by the engine and counted as an error, never silently dropped.
* **Outputs are forced** to ``min(output_len, max_output_tokens)`` tokens: the request asks for
  that many with ``max_tokens`` and (for vLLM) ``ignore_eos``, as the paper does.
* **Reader pace is scaled** by ``tds_scale``: every request's tokens-per-second expectation is
  multiplied by it, and nothing else changes (TTFT expectations, lengths and arrival times stay).
  Why: the paper's regime is an engine that, at the batch its KV memory allows, generates several
  times faster than people read, so a queue builds from memory pressure while running streams build
  up buffered slack that a QoE scheduler can spend. Two CPU cores running SmolLM2-135M produce a few
  hundred tokens per second in total, so at the batch sizes that fill its KV cache each stream gets
  only about the reading pace — no slack, a different regime. Scaling the readers' pace down by
  ``k`` puts the CPU engine at the same ratio of per-stream speed to reading pace as the paper's
  GPUs, and the request rate then sets how overloaded it is. ``k = 1`` is the trace as published.
* **Synthetic prompts** (for :func:`engine.sim.workload.synthetic_workload`, which has lengths but
  no text) are filler English words of about the requested length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.qoe import QoESpec
from engine.sim.arrivals import ArrivalSpec, arrival_times
from engine.sim.errors import WorkloadError
from engine.sim.workload import CHARS_PER_TOKEN, TraceRequest, read_workload_json

__all__ = ["PlanConfig", "PlannedRequest", "build_plan", "filler_prompt", "load_prompt_texts"]


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request of a benchmark run."""

    req_id: str  # unique within the run (a workload reused cyclically gets a ``#k`` suffix)
    at_s: float  # when it is due, seconds after the run starts
    prompt: str  # the text sent (already cut to fit)
    prompt_tokens: int  # estimated prompt tokens of ``prompt``
    max_tokens: int  # tokens the response is forced to (``max_tokens``, ``ignore_eos``)
    spec: QoESpec  # the reader's expectation, pace already scaled; scored and sent to the engine

    def to_trace_request(self) -> TraceRequest:
        """The same request as the simulator sees it (sizes as sent, spec as scored)."""
        return TraceRequest(self.req_id, self.prompt_tokens, self.max_tokens, self.spec)


@dataclass(frozen=True, slots=True)
class PlanConfig:
    """How a workload becomes a plan."""

    arrivals: ArrivalSpec  # the arrival process (rate, kind), from engine.sim.arrivals
    num_requests: int | None = None  # how many requests; None: as many as arrive in duration_s
    duration_s: float | None = None  # keep only requests due before this many seconds
    seed: int = 0  # arrival-process seed: same seed and kind → same arrivals (scaled by the rate)
    tds_scale: float = 1.0  # multiplies every request's reading pace (module docstring)
    max_prompt_tokens: int = 512  # prompts are cut to this many estimated tokens
    max_output_tokens: int = 512  # outputs are forced to min(output_len, this)
    skip: int = 0  # start this many requests into the workload

    def __post_init__(self) -> None:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests or duration_s (or both)")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests!r}")
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s > 0
        ):
            raise ValueError(f"duration_s must be a finite number > 0, got {self.duration_s!r}")
        if not (math.isfinite(self.tds_scale) and self.tds_scale > 0):
            raise ValueError(f"tds_scale must be a finite number > 0, got {self.tds_scale!r}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens!r}")
        if self.max_output_tokens < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {self.max_output_tokens!r}")
        if self.skip < 0:
            raise ValueError(f"skip must be >= 0, got {self.skip!r}")


def build_plan(
    workload: Sequence[TraceRequest],
    config: PlanConfig,
    prompt_texts: dict[str, str] | None = None,
) -> list[PlannedRequest]:
    """Give the workload's requests (cyclically, from ``config.skip``) arrival times and sizes.

    ``prompt_texts`` maps request ids to their text (:func:`load_prompt_texts`); requests without
    text get filler of their estimated length. Deterministic in ``(workload, config, texts)``.
    """
    if not workload:
        raise ValueError("the workload has no requests")
    texts = prompt_texts or {}
    want = config.num_requests if config.num_requests is not None else _arrivals_needed(config)
    times = arrival_times(config.arrivals, want, seed=config.seed)
    max_chars = int(config.max_prompt_tokens * CHARS_PER_TOKEN)
    out: list[PlannedRequest] = []
    for k, at in enumerate(times):
        at = float(at)
        if config.duration_s is not None and at >= config.duration_s:
            break
        index = config.skip + k
        base = workload[index % len(workload)]
        lap = index // len(workload)
        text = texts.get(base.req_id)
        if text is None:
            text = filler_prompt(min(base.prompt_tokens, config.max_prompt_tokens), seed=index)
        text = text[:max_chars]
        out.append(
            PlannedRequest(
                req_id=base.req_id if lap == 0 else f"{base.req_id}#{lap}",
                at_s=at,
                prompt=text,
                prompt_tokens=max(1, math.ceil(len(text) / CHARS_PER_TOKEN)),
                max_tokens=min(base.output_tokens, config.max_output_tokens),
                spec=QoESpec(base.spec.ttft_s, base.spec.tds_tok_s * config.tds_scale),
            )
        )
    return out


def _arrivals_needed(config: PlanConfig) -> int:
    """How many arrivals surely cover ``duration_s`` (the extras are trimmed by time)."""
    spec = config.arrivals
    if spec.kind == "replay":
        return len(spec.timestamps_s)
    mean = spec.rate_rps * (config.duration_s or 0.0)
    if spec.kind == "burst":
        mean *= spec.peak_ratio  # a window may sit entirely in a peak
    # Mean plus a wide margin for the count's spread (a gamma process with CV c has ~c² the
    # variance of a Poisson one).
    return math.ceil(mean + 10 * max(spec.cv, 1.0) * math.sqrt(mean) + 20)


def load_prompt_texts(path: str | Path) -> dict[str, str]:
    """Prompt text by request id, for the paper's trace or a ShareGPT file.

    Ids follow :func:`engine.sim.workload.load_workload`'s defaults (``req-{i}`` / ``conv-{i}``
    where a record has none). Records that carry no usable text are left out.
    """
    try:
        records = read_workload_json(path)
    except WorkloadError:
        return {}  # load_workload has already reported a bad file with a precise message
    texts: dict[str, str] = {}
    if not isinstance(records, list):
        return texts
    for index, rec in enumerate(records):
        if not isinstance(rec, dict):
            continue
        if "conversations" in rec:
            turns = rec.get("conversations") or []
            human = next(
                (t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"),
                None,
            )
            if isinstance(human, str):
                texts[str(rec.get("id", f"conv-{index}"))] = human
        elif isinstance(rec.get("prompt"), str):
            texts[str(rec["id"]) if "id" in rec else f"req-{index}"] = rec["prompt"]
    return texts


_FILLER_TEXT = (
    "the quick brown fox jumps over a lazy dog while people read text that streams from a model "
    "and every word arrives in time for the reader who waits patiently for an answer to appear"
)
_FILLER_WORDS = tuple(_FILLER_TEXT.split(" "))


def filler_prompt(tokens: int, seed: int = 0) -> str:
    """About ``tokens`` estimated tokens of English filler (deterministic in ``seed``)."""
    words: list[str] = []
    length, i = 0, seed
    target = max(1, tokens) * CHARS_PER_TOKEN
    while length < target:
        word = _FILLER_WORDS[i % len(_FILLER_WORDS)]
        words.append(word)
        length += len(word) + 1
        i += 7  # a stride coprime with the vocabulary, so neighbouring seeds differ
    return " ".join(words)
