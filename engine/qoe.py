"""The QoE model of a streamed response — the one definition every part of Andes uses.

After *Andes* (Liu et al., arXiv 2404.16283, §3). A request carries an expectation, :class:`QoESpec`:
the first token should be readable ``ttft_s`` after arrival and later tokens at the reader's pace of
``tds_tok_s`` tokens per second, so token *i* (0-based) is expected at ``e_i = ttft + i / tds``.

A token that arrives at ``d_i`` (seconds since the request arrived) is read at
``c_i = max(d_i, c_{i-1} + 1/tds)`` with ``c_0 = d_0``: early tokens wait in the reader's buffer, late
tokens delay everything after them. With ``E = c_{n-1}``::

    QoE = 1 - Σ_i max(c_i - e_i, 0) / Σ_i (E - e_i)      clipped to [0, 1]; 0 if no token arrived

This is the paper's area ratio S_actual / S_expected integrated up to the *actual* end. Two
consequences worth knowing (both documented in DESIGN.md):

* A response of ``l`` tokens that is perfect except a first-token delay ``d`` scores
  ``1 / (1 + 2·d·tds / (l - 1))`` exactly (≈ ``1/(1 + 2·d·tds/l)``).
* Because the areas run to the actual end, delaying the *last* token of an already-late stream can
  raise its score (tokens due at 1.0 s and 1.2 s read at 10.0/10.2 s score 0.011; read at 10.0/20.2 s,
  0.267). We keep the paper's definition; policies never use the final score as an objective — they
  value requests with the horizon predictors below, whose benefit term is monotone in delivery time.

(The authors' released ``qoe_tracker.py`` compares token *i* using token *i-1*'s read time and
subtracts an extra ``n/(2·tds)`` from the denominator; we do not copy either.)

Horizon predictors (used by the scheduler, §4.2 of the paper). At time ``t`` the scheduler asks what a
request's QoE will be at ``h = t + Δt`` if it waits (no token in the horizon) or if it is served at a
per-token latency ``L``. We evaluate the same area ratio truncated at ``h``: the expected curve runs to
``h`` (every token with ``e_i ≤ h`` counts, delivered or not), an undelivered token contributes
``h - e_i`` to the gap, and a token read at ``c_i ≤ h`` contributes ``max(c_i - e_i, 0)``. Waiting and
serving share the denominator, so the value of serving is the closed-form sum
``Σ_k max(h - max(c_k, e_k), 0) / Σ_{e_i ≤ h} (h - e_i)`` over the tokens generated in the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TDS_TOK_S",
    "DEFAULT_TTFT_S",
    "QoESpec",
    "QoETracker",
    "qoe",
    "read_times",
    "slack_s",
]

DEFAULT_TTFT_S = 1.0
"""Default expected time to first token, seconds (the paper's trace uses 1 s for every request)."""

DEFAULT_TDS_TOK_S = 4.8
"""Default reading pace, tokens/s (the paper's population mean for reading is about 4.5–4.8)."""


@dataclass(frozen=True, slots=True)
class QoESpec:
    """A reader's expectation of a stream."""

    ttft_s: float = DEFAULT_TTFT_S  # seconds from arrival until the first token should be readable
    tds_tok_s: float = DEFAULT_TDS_TOK_S  # reading pace, tokens per second

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ttft_s) and self.ttft_s >= 0):
            raise ValueError(f"ttft_s must be a finite number >= 0, got {self.ttft_s!r}")
        if not (math.isfinite(self.tds_tok_s) and self.tds_tok_s > 0):
            raise ValueError(f"tds_tok_s must be a finite number > 0, got {self.tds_tok_s!r}")

    def expected_s(self, index: int) -> float:
        """When token ``index`` (0-based) is expected to be read, seconds since arrival."""
        return self.ttft_s + index / self.tds_tok_s

    def expected_sum_s(self, n: int) -> float:
        """``Σ_{i<n} e_i`` in closed form."""
        return n * self.ttft_s + n * (n - 1) / (2.0 * self.tds_tok_s)


def read_times(arrivals_s: Sequence[float], spec: QoESpec) -> list[float]:
    """When each token is read: ``c_i = max(d_i, c_{i-1} + 1/tds)``, ``c_0 = d_0``."""
    gap = 1.0 / spec.tds_tok_s
    out: list[float] = []
    c = -math.inf
    for d in arrivals_s:
        c = max(d, c + gap)
        out.append(c)
    return out


def qoe(arrivals_s: Sequence[float], spec: QoESpec) -> float:
    """The exact QoE of a stream whose tokens arrived at ``arrivals_s`` (seconds since arrival).

    Arrivals must be non-decreasing. Returns a value in [0, 1]; 0 when no token arrived.
    """
    n = len(arrivals_s)
    if n == 0:
        return 0.0
    c = read_times(arrivals_s, spec)
    late = sum(max(ci - spec.expected_s(i), 0.0) for i, ci in enumerate(c))
    return _ratio(late, n * c[-1] - spec.expected_sum_s(n))


def _ratio(late_area: float, expected_area: float) -> float:
    if late_area <= 0.0:
        return 1.0
    if expected_area <= 0.0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - late_area / expected_area))


class QoETracker:
    """Incremental QoE of one stream: O(1) per token, equal to :func:`qoe` on the same arrivals.

    Times are seconds on any clock; ``arrival_s`` is the request's arrival on that clock.
    """

    __slots__ = ("arrival_s", "last_read_s", "late_area_s", "num_tokens", "spec")

    def __init__(self, spec: QoESpec, arrival_s: float = 0.0) -> None:
        self.spec = spec
        self.arrival_s = arrival_s
        self.num_tokens = 0  # tokens delivered so far
        self.last_read_s = -math.inf  # c_{n-1}, relative to arrival
        self.late_area_s = 0.0  # Σ max(c_i - e_i, 0)

    def add(self, now_s: float, count: int = 1) -> None:
        """Record ``count`` tokens delivered at ``now_s`` (absolute, same clock as ``arrival_s``)."""
        d = now_s - self.arrival_s
        gap = 1.0 / self.spec.tds_tok_s
        for _ in range(count):
            c = max(d, self.last_read_s + gap)
            self.late_area_s += max(c - self.spec.expected_s(self.num_tokens), 0.0)
            self.last_read_s = c
            self.num_tokens += 1

    def qoe(self) -> float:
        """The QoE so far (the final QoE once the stream has ended)."""
        n = self.num_tokens
        if n == 0:
            return 0.0
        return _ratio(self.late_area_s, n * self.last_read_s - self.spec.expected_sum_s(n))

    def read_horizon_s(self) -> float:
        """Absolute time at which the reader will have read every delivered token.

        ``c_{n-1} + 1/tds``: the moment the reader needs token ``n``. Before the first token this is
        the expected first-token time ``arrival + ttft``.
        """
        if self.num_tokens == 0:
            return self.arrival_s + self.spec.ttft_s
        return self.arrival_s + self.last_read_s + 1.0 / self.spec.tds_tok_s

    def slack_s(self, now_s: float) -> float:
        """Seconds the reader can go on from what is buffered (inferred on the server side)."""
        return self.read_horizon_s() - now_s


def slack_s(buffered_tokens: float, tds_tok_s: float, paused: bool = False) -> float:
    """Measured delivery slack: how long a reader can go on from ``buffered_tokens``.

    A paused reader (tab hidden) consumes nothing, so its slack is unbounded.
    """
    if paused:
        return math.inf
    return max(buffered_tokens, 0.0) / tds_tok_s
