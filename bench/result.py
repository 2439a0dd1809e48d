"""What a benchmark run measured: one :class:`RequestRecord` per request, scored with the QoE model.

Times in a record are seconds relative to the request's *due* time (its scheduled arrival), because
that is when its reader started waiting: a request held back by the load generator's concurrency
limit, or by a slow connection, is late for the reader all the same. Token arrival times are taken
at the client when the chunk (SSE event or WebSocket ``delta`` frame) carrying them was read off the
socket.

A record may also say how its reader read (:mod:`bench.readers`): the pace it actually read
at and when it hid the tab. Its :attr:`RequestRecord.qoe` is then the QoE on that reader's clock;
without them (every HTTP record, and every record written before they existed) it is exactly
:func:`core.qoe.qoe` of the arrivals against the declared spec, as before.

:class:`BenchRun` holds the records of one run with the settings that produced them and round-trips
through JSON (the raw measurements that the calibration and the reports read back).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.readers import reader_qoe
from core.qoe import QoESpec, qoe, read_times
from engine.sim.report import Summary

__all__ = ["BenchRun", "BenchSummary", "RequestRecord", "summarize", "to_report_summary"]


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it."""

    req_id: str
    due_s: float  # scheduled arrival, seconds after the run started
    spec: QoESpec  # the expectation it is scored against (pace already scaled)
    prompt_tokens_est: int  # estimated prompt tokens sent
    max_tokens: int  # tokens asked for
    sent_s: float = math.nan  # when the HTTP request went out, relative to due_s
    token_times_s: list[float] = field(default_factory=list)  # one entry per token, rel. to due_s
    usage_prompt_tokens: int | None = None  # the server's count, from the final usage chunk
    usage_completion_tokens: int | None = None  # the server's count of generated tokens
    finish_reason: str | None = None
    error: str | None = None  # why the request failed (HTTP status, timeout, …); None if it did not
    end_s: float = math.nan  # when the stream ended (or failed), relative to due_s
    read_tds_tok_s: float | None = None  # the reader's actual pace; None: the declared one
    pauses_s: list[tuple[float, float]] = field(default_factory=list)  # tab hidden [start, end)
    # The Andes gateway's own account of the stream (the ``andes`` field of its final chunk:
    # QoE measured at delivery, TTFT, tokens, parks, seams, queue wait); None from other servers.
    gateway: dict[str, Any] | None = None
    # SHA-256 (hex, first 16 digits) of the whole text received: two runs of one greedy request
    # (one parked and resumed, one not) must agree — the seam check end to end. None: no text.
    text_sha: str | None = None

    @property
    def ok(self) -> bool:
        """Finished without an error."""
        return self.error is None and not math.isnan(self.end_s)

    @property
    def num_tokens(self) -> int:
        """Tokens received."""
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float:
        """Time to first token (``nan`` when none arrived)."""
        return self.token_times_s[0] if self.token_times_s else math.nan

    @property
    def stall_s(self) -> float:
        """Seconds its reader waited for text after the first token (0 when every token came in
        time to be read at the declared pace; ``nan`` when none arrived): the read time of the
        last token, less the first token's, less the reading itself. With :attr:`ttft_s` it
        says whether a stream was late to start or stalled midway."""
        if not self.token_times_s:
            return math.nan
        read = read_times(self.token_times_s, self.spec)
        return max(read[-1] - read[0] - (len(read) - 1) / self.spec.tds_tok_s, 0.0)

    @property
    def reader_spec(self) -> QoESpec:
        """What the reader is scored against: the declared TTFT at the reader's actual pace."""
        if self.read_tds_tok_s is None or self.read_tds_tok_s == self.spec.tds_tok_s:
            return self.spec
        return QoESpec(self.spec.ttft_s, self.read_tds_tok_s)

    @property
    def qoe(self) -> float:
        """The QoE the reader experienced (0 when nothing arrived): on the reader's clock, at its
        pace (:func:`bench.readers.reader_qoe`); :func:`core.qoe.qoe` of the arrivals
        against the declared spec when the record says nothing about its reader."""
        return reader_qoe(self.token_times_s, self.reader_spec, self.pauses_s)

    @property
    def declared_qoe(self) -> float:
        """:func:`core.qoe.qoe` of the arrivals against the declared spec, on the wall clock
        (what a server that believes the declaration would score)."""
        return qoe(self.token_times_s, self.spec)

    @property
    def token_count_mismatch(self) -> bool:
        """The server's ``usage`` disagrees with the tokens counted from the stream."""
        return (
            self.usage_completion_tokens is not None
            and self.usage_completion_tokens != self.num_tokens
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times rounded to microseconds)."""
        data = asdict(self)
        data["spec"] = {"ttft_s": self.spec.ttft_s, "tds_tok_s": self.spec.tds_tok_s}
        data["token_times_s"] = [round(t, 6) for t in self.token_times_s]
        data["pauses_s"] = [[round(a, 6), round(b, 6)] for a, b in self.pauses_s]
        for key in ("sent_s", "end_s"):
            data[key] = None if math.isnan(data[key]) else round(data[key], 6)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RequestRecord:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        data["spec"] = QoESpec(**data["spec"])
        for key in ("sent_s", "end_s"):
            data[key] = math.nan if data.get(key) is None else float(data[key])
        data["pauses_s"] = [(float(a), float(b)) for a, b in data.get("pauses_s") or []]
        return cls(**data)


@dataclass(frozen=True, slots=True)
class BenchSummary:
    """Aggregates of a run (QoE over every request; failed requests score what they received)."""

    num_requests: int
    num_ok: int
    num_errors: int
    avg_qoe: float
    p10_qoe: float
    share_qoe_ge_0_9: float  # fraction of requests with QoE ≥ 0.9
    ttft_mean_s: float  # over requests that got a first token
    ttft_p50_s: float
    ttft_p99_s: float
    throughput_tok_s: float  # tokens received ÷ (last token − first due time)
    total_tokens: int
    token_count_mismatches: int  # requests whose usage disagreed with the stream's count

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN → None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


def summarize(records: list[RequestRecord]) -> BenchSummary:
    """Aggregate ``records``; an empty list gives NaNs and zeros."""
    n = len(records)
    scores = np.array([r.qoe for r in records], dtype=float)
    ttfts = np.array([r.ttft_s for r in records if r.token_times_s], dtype=float)
    total = sum(r.num_tokens for r in records)
    ends = [r.due_s + r.token_times_s[-1] for r in records if r.token_times_s]
    span = (max(ends) - min(r.due_s for r in records)) if ends else 0.0
    nan = math.nan
    return BenchSummary(
        num_requests=n,
        num_ok=sum(r.ok for r in records),
        num_errors=sum(r.error is not None for r in records),
        avg_qoe=float(scores.mean()) if n else nan,
        p10_qoe=float(np.percentile(scores, 10)) if n else nan,
        share_qoe_ge_0_9=float((scores >= 0.9).mean()) if n else nan,
        ttft_mean_s=float(ttfts.mean()) if ttfts.size else nan,
        ttft_p50_s=float(np.percentile(ttfts, 50)) if ttfts.size else nan,
        ttft_p99_s=float(np.percentile(ttfts, 99)) if ttfts.size else nan,
        throughput_tok_s=total / span if span > 0 else nan,
        total_tokens=total,
        token_count_mismatches=sum(r.token_count_mismatch for r in records),
    )


def to_report_summary(
    summary: BenchSummary,
    policy: str,
    rate_rps: float = math.nan,
    arrivals: str = "",
    preemptions: float = math.nan,
    wall_s: float = math.nan,
) -> Summary:
    """The simulator's :class:`~engine.sim.report.Summary` of a measured run.

    Lets measured and simulated runs share one table, JSON and plot format
    (:func:`engine.sim.report.format_table`, :func:`~engine.sim.report.plot_qoe_vs_rate`).
    ``preemptions`` is the engine's count for the run (from its metrics) when known.
    """
    n = summary.num_requests
    return Summary(
        policy=policy,
        profile="measured",
        arrivals=arrivals,
        rate_rps=float(rate_rps),
        num_requests=n,
        avg_qoe=summary.avg_qoe,
        p10_qoe=summary.p10_qoe,
        share_qoe_ge_0_9=summary.share_qoe_ge_0_9,
        ttft_mean_s=summary.ttft_mean_s,
        ttft_p50_s=summary.ttft_p50_s,
        ttft_p99_s=summary.ttft_p99_s,
        throughput_tok_s=summary.throughput_tok_s,
        preemptions_per_req=preemptions / n if n else math.nan,
        iterations=0,
        wall_s=wall_s,
    )


@dataclass(slots=True)
class BenchRun:
    """The records of one run and what produced them."""

    records: list[RequestRecord]
    meta: dict[str, Any] = field(default_factory=dict)  # endpoint, plan settings, timings
    interrupted: bool = False  # stopped early (Ctrl-C); unfinished requests carry an error

    def summary(self) -> BenchSummary:
        """:func:`summarize` over the records."""
        return summarize(self.records)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: meta, summary and every record."""
        return {
            "meta": self.meta,
            "interrupted": self.interrupted,
            "summary": self.summary().to_json(),
            "records": [r.to_json() for r in self.records],
        }

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` (parents created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchRun:
        """Inverse of :meth:`to_json` (the summary is recomputed)."""
        return cls(
            records=[RequestRecord.from_json(r) for r in data["records"]],
            meta=dict(data.get("meta", {})),
            interrupted=bool(data.get("interrupted", False)),
        )

    @classmethod
    def load(cls, path: str | Path) -> BenchRun:
        """Read a file written by :meth:`save`."""
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def load_finished(cls, path: Path, meta_key: str | None = None,
                      expected: Any = None) -> BenchRun | None:  # fmt: skip
        """A benchmark's saved run to resume from: the run at ``path`` if it exists, reads back,
        was not interrupted and (``meta_key`` given) was made with ``expected`` there (a
        dataclass, compared as it reads back from JSON); else None, to be run again."""
        if not path.exists():
            return None
        try:
            run = cls.load(path)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if run.interrupted:
            return None
        if meta_key is not None and run.meta.get(meta_key) != json.loads(json.dumps(
                asdict(expected))):
            return None
        return run
