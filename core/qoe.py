"""The QoE model of a streamed response — the one definition every part of Andes uses.

After *Andes* (Liu et al., arXiv 2404.16283, §3). A request carries an expectation,
:class:`QoESpec`: the first token should be readable ``ttft_s`` after arrival and later tokens at
the reader's pace of ``tds_tok_s`` tokens per second, so token *i* (0-based) is expected at
``e_i = ttft + i / tds``.

A token that arrives at ``d_i`` (seconds since the request arrived) is read at
``c_i = max(d_i, c_{i-1} + 1/tds)`` with ``c_0 = d_0``: early tokens wait in the reader's buffer,
late tokens delay everything after them. With ``E = c_{n-1}``::

    QoE = 1 - Σ_i max(c_i - e_i, 0) / Σ_i (E - e_i)      clipped to [0, 1]; 0 if no token arrived

This is the paper's area ratio S_actual / S_expected integrated up to the *actual* end (§3). Two
consequences worth knowing (tests/core/test_qoe.py checks both):

* A response of ``l`` tokens that is perfect except a first-token delay ``d`` scores
  ``1 / (1 + 2·d·tds / (l - 1))`` exactly (≈ ``1/(1 + 2·d·tds/l)``).
* Because the areas run to the actual end, delaying the *last* token of an already-late stream can
  raise its score (tokens due at 1.0 s and 1.2 s read at 10.0/10.2 s score 0.011; read at
  10.0/20.2 s, 0.267). We keep the paper's definition; policies never use the final score as an
  objective — they value requests with the horizon predictors below, whose benefit term is
  monotone in delivery time.

(The authors' released ``qoe_tracker.py`` compares token *i* using token *i-1*'s read time and
subtracts an extra ``n/(2·tds)`` from the denominator; we do not copy either.)

Horizon predictors (used by the scheduler, §4.2 of the paper). At time ``t`` the scheduler asks
what a request's QoE will be at ``h = t + Δt`` if it waits (no token in the horizon) or if it is
served at a per-token latency ``L``. We evaluate the same area ratio truncated at ``h``: the
expected curve runs to ``h`` (every token with ``e_i ≤ h`` counts, delivered or not), an
undelivered token contributes ``h - e_i`` to the gap, and a token read at ``c_i ≤ h`` contributes
``max(c_i - e_i, 0)``. Waiting and serving share the denominator, so the value of serving is the
closed-form sum ``Σ_k max(h - max(c_k, e_k), 0) / Σ_{e_i ≤ h} (h - e_i)`` over the tokens
generated in the horizon.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TDS_TOK_S",
    "DEFAULT_TTFT_S",
    "QoESpec",
    "QoETracker",
    "predict_serve",
    "predict_serve_gain",
    "predict_wait",
    "qoe",
    "read_times",
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
        """Record ``count`` tokens delivered at ``now_s`` (absolute, same clock as
        ``arrival_s``)."""
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



# --- Horizon predictors (closed form, O(1) per call) ---------------------------------------
#
# Times below are relative to the request's arrival. With H the horizon, g = 1/tds of the spec:
#
#   D(H)      = Σ_{e_i ≤ H} (H - e_i)                               the expected area to H
#   gap_wait  = Σ_{i<n} max(min(c_i, H) - e_i, 0) + Σ_{n ≤ i, e_i ≤ H} (H - e_i)
#   gain      = Σ_{k ≥ 1} max(H - max(c'_k, e_{n+k-1}), 0)          what serving removes from the
# gap
#
# Q_wait = 1 - gap_wait / D and Q_serve = Q_wait + gain / D; both lie in [0, 1] without clipping
# because every token's contribution to the gap is at most its contribution to D.
#
# Delivered tokens: the tracker keeps only Σ max(c_i - e_i, 0) and c_{n-1}, yet truncating at H is
# exact: a token read after H ≥ now arrived before now, so it waited in the buffer and was read at
# c_{i-1} + g. Every token read after H therefore sits on the paced tail c_i = c_{n-1} - (n-1-i)·g.
#
# New tokens arrive at d_k = now + F + (k-1)·L and are read at c'_k = max(d_k, c'_{k-1} + g_r)
# with c'_0 + g_r = R (when the reader needs the next token). Unrolling the recurrence,
#   c'_k = max(d_1 + (k-1)·max(L, g_r), max(d_1, R) + (k-1)·g_r),
# so every gain term is the positive part of the minimum of three decreasing lines in k, summed
# piecewise with arithmetic series.


def _sum_pos_line(a: float, b: float, lo: int, hi: int) -> float:
    """``Σ_{k=lo}^{hi-1} max(a + b·k, 0)`` in closed form."""
    if b == 0.0:
        return (hi - lo) * a if a > 0.0 else 0.0
    root = -a / b
    if b < 0.0:
        end = min(hi, math.ceil(root)) if math.isfinite(root) else hi
        start = lo
    else:
        start = max(lo, math.floor(root) + 1) if math.isfinite(root) else lo
        end = hi
    count = end - start
    if count <= 0:
        return 0.0
    first, last = a + b * start, a + b * (end - 1)
    return count * (max(first, 0.0) + max(last, 0.0)) * 0.5


def _sum_pos_min_lines(lines: Sequence[tuple[float, float]], lo: int, hi: int) -> float:
    """``Σ_{k=lo}^{hi-1} max(min_j(a_j + b_j·k), 0)``: split where the minimum changes line."""
    cuts = {lo, hi}
    for i, (a1, b1) in enumerate(lines):
        for a2, b2 in lines[i + 1 :]:
            if b1 != b2:
                x = (a2 - a1) / (b1 - b2)
                if lo < x < hi:
                    cuts.add(math.ceil(x))
    edges = sorted(cuts)
    total = 0.0
    for start, end in itertools.pairwise(edges):
        if end <= start:
            continue
        # No crossing lies between the integers of [start, end): one line is lowest on all of them.
        mid = 0.5 * (start + end - 1)
        a, b = min(lines, key=lambda line: line[0] + line[1] * mid)
        total += _sum_pos_line(a, b, start, end)
    return total


def _expected_count(spec: QoESpec, h: float) -> int:
    """How many tokens are expected by ``h`` (relative): ``#{i : e_i ≤ h}``."""
    if h < spec.ttft_s:
        return 0
    return math.floor((h - spec.ttft_s) * spec.tds_tok_s) + 1


def _expected_area(spec: QoESpec, h: float, lo: int, hi: int) -> float:
    """``Σ_{i=lo}^{hi-1} (h - e_i)``."""
    if hi <= lo:
        return 0.0
    count = hi - lo
    return count * (h - spec.ttft_s) - (lo + hi - 1) * count / (2.0 * spec.tds_tok_s)


def _wait_terms(tracker: QoETracker, h: float) -> tuple[float, float, int]:
    """(gap_wait, D, m) at the relative horizon ``h``; m = tokens expected by ``h``."""
    spec, n = tracker.spec, tracker.num_tokens
    m = _expected_count(spec, h)
    denom = _expected_area(spec, h, 0, m)
    gap = tracker.late_area_s + _expected_area(spec, h, n, m)
    c_last = tracker.last_read_s
    if n > 0 and c_last > h:
        g = 1.0 / spec.tds_tok_s
        # The paced tail i = n-1-j, j < tail, is read after h: swap its full lateness for its
        # lateness up to h. On the tail c_i - e_i = c_last - e_{n-1} for every j.
        tail = min(n, math.ceil((c_last - h) * spec.tds_tok_s))
        lateness = max(c_last - spec.expected_s(n - 1), 0.0)
        truncated = _sum_pos_line(h - spec.expected_s(n - 1), g, 0, tail)
        gap -= tail * lateness - truncated
    return gap, denom, m


def _ratio_to(gap: float, denom: float) -> float:
    if denom <= 0.0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - gap / denom))


def predict_wait(tracker: QoETracker, now_s: float, horizon_s: float) -> float:
    """QoE at ``now_s + horizon_s`` if the request produces no token until then (absolute, [0, 1]).

    ``horizon_s`` is the look-ahead Δt in seconds; ``now_s`` is on the tracker's clock and not
    earlier than its last delivery. The value is the area ratio truncated at the horizon (module
    docstring); it is 1 while no token is expected yet.
    """
    gap, denom, _ = _wait_terms(tracker, now_s + horizon_s - tracker.arrival_s)
    return _ratio_to(gap, denom)


def predict_serve_gain(
    tracker: QoETracker,
    now_s: float,
    horizon_s: float,
    token_latency_s: float,
    first_token_delay_s: float | None = None,
    *,
    reader_horizon_s: float | None = None,
    reader_tds_tok_s: float | None = None,
    max_new_tokens: int | None = None,
) -> float:
    """``predict_serve - predict_wait``: the QoE that serving over the horizon adds (≥ 0).

    See :func:`predict_serve` for the arguments. Cheaper than calling both, and exact. The
    scheduler's vectorised version (:mod:`engine.policy.horizon`) is tested against this one.
    """
    h = now_s + horizon_s - tracker.arrival_s
    _, denom, _ = _wait_terms(tracker, h)
    if denom <= 0.0:
        return 0.0
    return _serve_gap_reduction(
        tracker, now_s, h, token_latency_s, first_token_delay_s,
        reader_horizon_s, reader_tds_tok_s, max_new_tokens,
    ) / denom  # fmt: skip


def predict_serve(
    tracker: QoETracker,
    now_s: float,
    horizon_s: float,
    token_latency_s: float,
    first_token_delay_s: float | None = None,
    *,
    reader_horizon_s: float | None = None,
    reader_tds_tok_s: float | None = None,
    max_new_tokens: int | None = None,
) -> float:
    """QoE at ``now_s + horizon_s`` if the request is served from ``now_s`` (absolute, [0, 1]).

    New tokens arrive at ``now + first_token_delay_s + (k-1)·token_latency_s`` (``k = 1, 2, …``;
    the first delay defaults to one token latency — a running request — and for a waiting or
    preempted one should include its prefill). At most ``max_new_tokens`` are produced (unbounded
    by default; the horizon bounds the sum anyway).

    Where the reader is: by default inferred from the tracker (it needs the next token one read
    interval after it read the last, ``c_{n-1} + 1/tds``, or reads the first token on arrival, and
    reads at the spec's pace). A measured slack report replaces that inference:
    ``reader_horizon_s`` is the absolute time the reader will need the next token
    (``now + slack``; ``math.inf`` for a paused reader, whose new tokens then add nothing),
    ``reader_tds_tok_s`` its measured pace. The expected curve is always the spec's; the delivered
    tokens' history is always the tracker's.

    The reference predictor: no production code calls it (the scheduler values requests by
    :func:`predict_serve_gain`), but it is the one tests check against the exact QoE of the same
    deliveries, and :func:`predict_serve_gain` is tested as its difference from
    :func:`predict_wait`.
    """
    h = now_s + horizon_s - tracker.arrival_s
    gap, denom, _ = _wait_terms(tracker, h)
    if denom <= 0.0:
        return 1.0
    gap -= _serve_gap_reduction(
        tracker, now_s, h, token_latency_s, first_token_delay_s,
        reader_horizon_s, reader_tds_tok_s, max_new_tokens,
    )  # fmt: skip
    return _ratio_to(gap, denom)


def _serve_gap_reduction(
    tracker: QoETracker,
    now_s: float,
    h: float,
    latency: float,
    first_delay: float | None,
    reader_horizon_s: float | None,
    reader_tds: float | None,
    max_new: int | None,
) -> float:
    """``Σ_k max(h - max(c'_k, e_{n+k-1}), 0)`` over the new tokens (relative horizon ``h``)."""
    if not (latency >= 0.0 and math.isfinite(latency)):
        raise ValueError(f"token_latency_s must be a finite number >= 0, got {latency!r}")
    spec, n = tracker.spec, tracker.num_tokens
    if first_delay is None:
        first_delay = latency
    g_r = 1.0 / (reader_tds if reader_tds is not None else spec.tds_tok_s)
    if reader_horizon_s is not None:
        need = reader_horizon_s - tracker.arrival_s
    elif n > 0:
        need = tracker.last_read_s + 1.0 / spec.tds_tok_s
    else:
        need = -math.inf
    d1 = now_s - tracker.arrival_s + first_delay
    if need == math.inf or d1 >= h:
        return 0.0
    # Tokens k = 1 .. K where e_{n+k-1} < h; later ones add nothing.
    k_hi = _expected_count(spec, h) - n + 1
    if max_new is not None:
        k_hi = min(k_hi, max_new + 1)
    if k_hi <= 1:
        return 0.0
    # Lines in k (value at k = a + b·k): h - d-line, h - reader-line, h - expected.
    s1 = max(latency, g_r)
    base2 = max(d1, need)
    g = 1.0 / spec.tds_tok_s
    lines = [
        (h - d1 + s1, -s1),
        (h - base2 + g_r, -g_r),
        (h - spec.ttft_s - (n - 1) * g, -g),
    ]
    return _sum_pos_min_lines(lines, 1, k_hi)
