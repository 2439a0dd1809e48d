"""Summaries of simulation runs: per-request QoE rolled up, as a text table, JSON and a plot.

Definitions (every number is over all requests of a run):

* ``avg_qoe`` — mean final QoE; ``p10_qoe`` — its 10th percentile (linear interpolation, numpy's
  default); ``share_qoe_ge_0_9`` — fraction of requests with QoE ≥ 0.9.
* ``ttft_*_s`` — time from arrival to the first token: mean, median, 99th percentile.
* ``throughput_tok_s`` — output tokens of the run ÷ (last token time − first arrival time).
* ``preemptions_per_req`` — total preemptions ÷ requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.sim.simulator import SimResult

__all__ = ["Summary", "format_table", "plot_qoe_vs_rate", "summarize", "to_json"]


@dataclass(frozen=True, slots=True)
class Summary:
    """One run, rolled up (definitions in the module docstring)."""

    policy: str
    profile: str
    arrivals: str  # arrival process label, e.g. "poisson" or "gamma cv=3"
    rate_rps: float  # mean request rate
    num_requests: int
    avg_qoe: float
    p10_qoe: float
    share_qoe_ge_0_9: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    throughput_tok_s: float
    preemptions_per_req: float
    iterations: int
    wall_s: float  # real seconds the simulation took


def summarize(result: SimResult, rate_rps: float = float("nan"), arrivals: str = "") -> Summary:
    """Roll ``result`` up into a :class:`Summary`."""
    reqs = result.requests
    if not reqs:
        raise ValueError("cannot summarize a run without requests")
    q = np.array([r.qoe for r in reqs])
    ttft = np.array([r.ttft_s for r in reqs])
    tokens = sum(r.output_tokens for r in reqs)
    span = max(r.finish_s for r in reqs) - min(r.arrival_s for r in reqs)
    return Summary(
        policy=result.policy,
        profile=result.profile,
        arrivals=arrivals,
        rate_rps=float(rate_rps),
        num_requests=len(reqs),
        avg_qoe=float(q.mean()),
        p10_qoe=float(np.percentile(q, 10)),
        share_qoe_ge_0_9=float((q >= 0.9).mean()),
        ttft_mean_s=float(ttft.mean()),
        ttft_p50_s=float(np.percentile(ttft, 50)),
        ttft_p99_s=float(np.percentile(ttft, 99)),
        throughput_tok_s=tokens / span if span > 0 else float("inf"),
        preemptions_per_req=sum(r.preemptions for r in reqs) / len(reqs),
        iterations=result.iterations,
        wall_s=result.wall_s,
    )


_COLUMNS: list[tuple[str, str, str]] = [
    # (header, Summary field, format)
    ("policy", "policy", "{}"),
    ("rate/s", "rate_rps", "{:g}"),
    ("avg QoE", "avg_qoe", "{:.3f}"),
    ("p10 QoE", "p10_qoe", "{:.3f}"),
    ("QoE≥0.9", "share_qoe_ge_0_9", "{:.1%}"),
    ("TTFT mean s", "ttft_mean_s", "{:.2f}"),
    ("TTFT p50 s", "ttft_p50_s", "{:.2f}"),
    ("TTFT p99 s", "ttft_p99_s", "{:.2f}"),
    ("tok/s", "throughput_tok_s", "{:.0f}"),
    ("preempt/req", "preemptions_per_req", "{:.2f}"),
]


def format_table(summaries: Sequence[Summary], markdown: bool = False) -> str:
    """A fixed-width text table (or a Markdown table) with one row per summary."""
    rows = [[fmt.format(getattr(s, attr)) for _, attr, fmt in _COLUMNS] for s in summaries]
    headers = [h for h, _, _ in _COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def to_json(summaries: Sequence[Summary]) -> str:
    """The summaries as a JSON list of objects (field names as in :class:`Summary`)."""

    def clean(value: object) -> object:
        # JSON has no NaN/inf; write null rather than a non-standard token.
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return json.dumps([{k: clean(v) for k, v in asdict(s).items()} for s in summaries], indent=2)


def plot_qoe_vs_rate(
    summaries: Sequence[Summary], path: str | Path, title: str = "Average QoE vs request rate"
) -> Path:
    """Save a PNG of average QoE against request rate, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=100)
    for policy in dict.fromkeys(s.policy for s in summaries):
        pts = sorted((s.rate_rps, s.avg_qoe) for s in summaries if s.policy == policy)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    ax.set_xlabel("request rate (requests/s)")
    ax.set_ylabel("average QoE")
    ax.set_ylim(0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
