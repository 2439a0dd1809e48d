"""Workloads: what each simulated request asks for (prompt, output length, the reader's QoE spec).

Three sources, all producing a list of :class:`TraceRequest` (arrival times come separately, from
:mod:`engine.sim.arrivals`):

* the Andes paper's trace (``andes_sharegpt_qoe_trace.json``: a JSON list of records with ``id``,
  ``prompt``, ``output_len``, ``ttft`` and ``latency`` = seconds per token = 1/TDS), shipped in
  this package as :data:`PAPER_TRACE` (gzipped; source and licence in ``engine/sim/data/``);
* ShareGPT-format JSON (a list of ``{"id", "conversations": [{"from": "human"|"gpt", "value"}]}``):
  the first human turn followed by a gpt turn of each conversation becomes one request, as vLLM's
  ``benchmark_serving`` does; conversations without such a pair are skipped;
* a seeded synthetic generator.

Token counts: the traces carry text only, so prompt (and ShareGPT output) lengths are *estimated* at
:data:`CHARS_PER_TOKEN` characters per token — the usual rule of thumb for English BPE tokenizers
(OpenAI's tokenizer guide: "one token generally corresponds to ~4 characters of text"). No
tokenizer is needed, and the estimate only affects KV footprint and prefill cost.

Any workload file may be gzipped (a name ending in ``.gz``).
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.qoe import DEFAULT_TDS_TOK_S, DEFAULT_TTFT_S, QoESpec
from engine.sim.errors import WorkloadError

__all__ = [
    "CHARS_PER_TOKEN",
    "PAPER_TRACE",
    "TraceRequest",
    "estimate_tokens",
    "load_andes_trace",
    "load_sharegpt",
    "load_workload",
    "read_workload_json",
    "synthetic_workload",
]

CHARS_PER_TOKEN = 4.0
"""Characters per token used to estimate token counts from text (see the module docstring)."""

PAPER_TRACE = Path(__file__).resolve().parent / "data" / "andes_sharegpt_qoe_trace.json.gz"
"""The Andes paper's ShareGPT trace (3,000 requests), shipped with the package: the default
workload of ``andes sim``, ``andes bench`` and the benchmarks. ``engine/sim/data/README.md`` says
where it comes from (Apache-2.0) and which part is held out from tuning."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a workload, before it is given an arrival time."""

    req_id: str
    prompt_tokens: int  # prompt length, tokens (estimated from text for the file formats)
    output_tokens: int  # the response is forced to exactly this many tokens, as in the paper
    spec: QoESpec  # the reader's expectation

    def __post_init__(self) -> None:
        if not (isinstance(self.prompt_tokens, int) and self.prompt_tokens >= 1):
            raise ValueError(f"prompt_tokens must be an int >= 1, got {self.prompt_tokens!r}")
        if not (isinstance(self.output_tokens, int) and self.output_tokens >= 1):
            raise ValueError(f"output_tokens must be an int >= 1, got {self.output_tokens!r}")


def estimate_tokens(text: str) -> int:
    """Estimated token count of ``text`` (at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def load_workload(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Load the paper's trace or a ShareGPT file, telling them apart by the first record's keys."""
    path = Path(path)
    records = _read_json_list(path)
    first = records[0] if records else None
    if isinstance(first, dict) and "conversations" in first:
        return load_sharegpt(path, limit=limit, _records=records)
    return load_andes_trace(path, limit=limit, _records=records)


def load_andes_trace(
    path: str | Path, limit: int | None = None, *, _records: list[Any] | None = None
) -> list[TraceRequest]:
    """Load the Andes paper's trace format (module docstring); ``limit`` keeps the first N."""
    path = Path(path)
    records = _read_json_list(path) if _records is None else _records
    out: list[TraceRequest] = []
    for index, rec in enumerate(records[:limit] if limit is not None else records):
        where = _Where(path, index, rec)
        if not isinstance(rec, dict):
            raise where.error(None, f"expected an object, got {type(rec).__name__}")
        req_id = str(rec["id"]) if "id" in rec else f"req-{index}"
        prompt = where.field(rec, "prompt", str)
        output_len = where.field(rec, "output_len", int)
        if output_len < 1:
            raise where.error("output_len", f"must be >= 1, got {output_len!r}")
        ttft = float(where.field(rec, "ttft", (int, float), default=DEFAULT_TTFT_S))
        latency = float(where.field(rec, "latency", (int, float), default=1.0 / DEFAULT_TDS_TOK_S))
        if not (math.isfinite(latency) and latency > 0):
            raise where.error("latency", f"must be seconds per token > 0, got {latency!r}")
        try:
            spec = QoESpec(ttft_s=ttft, tds_tok_s=1.0 / latency)
        except ValueError as exc:
            raise where.error("ttft", str(exc)) from None
        out.append(TraceRequest(req_id, estimate_tokens(prompt), output_len, spec))
    return out


def load_sharegpt(
    path: str | Path,
    limit: int | None = None,
    spec: QoESpec | None = None,
    *,
    _records: list[Any] | None = None,
) -> list[TraceRequest]:
    """Load ShareGPT-format JSON: one request per conversation (first human → gpt pair).

    Every request gets ``spec`` (default: :class:`QoESpec` defaults). ``limit`` keeps the first N
    requests.
    """
    path = Path(path)
    records = _read_json_list(path) if _records is None else _records
    spec = spec or QoESpec()
    out: list[TraceRequest] = []
    for index, rec in enumerate(records):
        if limit is not None and len(out) >= limit:
            break
        where = _Where(path, index, rec)
        if not isinstance(rec, dict):
            raise where.error(None, f"expected an object, got {type(rec).__name__}")
        turns = where.field(rec, "conversations", list)
        pair = None
        for t, turn in enumerate(turns):
            if not (isinstance(turn, dict) and isinstance(turn.get("from"), str)):
                raise where.error(
                    f"conversations[{t}]", "expected an object with 'from' and 'value'"
                )
            if not isinstance(turn.get("value"), str):
                raise where.error(f"conversations[{t}].value", "expected a string")
            if turn["from"] == "human" and t + 1 < len(turns):
                nxt = turns[t + 1]
                if isinstance(nxt, dict) and nxt.get("from") == "gpt":
                    if not isinstance(nxt.get("value"), str):
                        raise where.error(f"conversations[{t + 1}].value", "expected a string")
                    pair = (turn["value"], nxt["value"])
                    break
        if pair is None:
            continue  # no human → gpt exchange; vLLM's benchmark skips these too
        req_id = str(rec.get("id", f"conv-{index}"))
        out.append(TraceRequest(req_id, estimate_tokens(pair[0]), estimate_tokens(pair[1]), spec))
    return out


def synthetic_workload(
    num_requests: int,
    seed: int = 0,
    mean_prompt_tokens: float = 160.0,
    mean_output_tokens: float = 330.0,
    max_output_tokens: int = 1400,
    tds_range_tok_s: tuple[float, float] = (3.8, 5.1),
    ttft_s: float = DEFAULT_TTFT_S,
) -> list[TraceRequest]:
    """A seeded synthetic workload shaped like the paper's trace.

    Prompt and output lengths are log-normal (σ = 1, a heavy tail like ShareGPT's) with the given
    means, outputs clipped to ``max_output_tokens``; reading paces are uniform over
    ``tds_range_tok_s`` (the trace's 0.196–0.264 s/token is 3.8–5.1 tokens/s).
    """
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests!r}")
    if mean_prompt_tokens < 1 or mean_output_tokens < 1:
        raise ValueError(
            f"mean lengths must be >= 1, got {mean_prompt_tokens!r} and {mean_output_tokens!r}"
        )
    lo, hi = tds_range_tok_s
    if not (0 < lo <= hi):
        raise ValueError(f"tds_range_tok_s must satisfy 0 < low <= high, got {tds_range_tok_s!r}")
    rng = np.random.default_rng(seed)
    sigma = 1.0
    # A log-normal with parameters (mu, sigma) has mean exp(mu + sigma²/2).
    prompts = rng.lognormal(math.log(mean_prompt_tokens) - sigma**2 / 2, sigma, num_requests)
    outputs = rng.lognormal(math.log(mean_output_tokens) - sigma**2 / 2, sigma, num_requests)
    paces = rng.uniform(lo, hi, num_requests)
    return [
        TraceRequest(
            f"syn-{i}",
            max(1, round(float(p))),
            int(min(max(1, round(float(o))), max_output_tokens)),
            QoESpec(ttft_s=ttft_s, tds_tok_s=float(v)),
        )
        for i, (p, o, v) in enumerate(zip(prompts, outputs, paces, strict=True))
    ]


def read_workload_json(path: str | Path) -> Any:
    """The JSON in a workload file, gunzipped when its name ends in ``.gz``.

    Raises :class:`WorkloadError` naming the file when it cannot be read or is not JSON."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, EOFError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise WorkloadError(f"{path}: cannot read workload: {problem}") from None
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"{path}: not UTF-8 text: {exc.reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkloadError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None


def _read_json_list(path: Path) -> list[Any]:
    data = read_workload_json(path)
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: expected a JSON list of requests, got {type(data).__name__}")
    return data


class _Where:
    """Names a record in error messages: file, index and id."""

    __slots__ = ("index", "path", "rec_id")

    def __init__(self, path: Path, index: int, rec: Any) -> None:
        self.path, self.index = path, index
        self.rec_id = rec.get("id") if isinstance(rec, dict) else None

    def error(self, field: str | None, problem: str) -> WorkloadError:
        rid = f" (id {self.rec_id!r})" if self.rec_id is not None else ""
        at = f", field {field!r}" if field else ""
        return WorkloadError(f"{self.path}: record {self.index}{rid}{at}: {problem}")

    def field(
        self,
        rec: dict[str, Any],
        name: str,
        types: type | tuple[type, ...],
        default: Any = ...,
    ) -> Any:
        if name not in rec:
            if default is ...:
                raise self.error(name, "missing")
            return default
        value = rec[name]
        # bool is an int subclass; a JSON true is never a valid length or time here.
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(
                t.__name__ for t in (types if isinstance(types, tuple) else (types,))
            )
            raise self.error(name, f"expected {want}, got {value!r}")
        return value
