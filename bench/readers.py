"""Who reads each stream: a seeded model of readers, and the QoE each of them experiences.

The paper's scheduler only knows what a request *declares* (``qoe: {ttft, tds}``) and infers from
it where the reader is. Real readers differ: some read at their own pace, not the declared one, and
some hide the tab for a while and come back. A :class:`Reader` is one such reader; the load
generator plays it (over the WebSocket: the local pacer at the reader's pace, acks of what was
shown, ``pause``/``resume`` frames) and scores the stream on the reader's clock.

The model (:class:`ReaderConfig`, every draw seeded):

* **Pace.** A share (``misdeclared_share``, default 30%) reads at ``declared tds × f``, with ``f``
  uniform in ``pace_factor`` (default [0.5, 0.8]); the rest read exactly at the declared pace. The
  default is slower-than-declared because that is what a client declaring a population pace
  mostly gets wrong in the direction a scheduler can use: such a reader builds up a buffer that
  server-side inference cannot see, so the engine can serve someone else meanwhile.
* **Skimming.** Another share (``skim_share``, default 0) reads *faster* than declared, at
  ``declared tds × f`` with ``f`` uniform in ``skim_factor`` (default [1.5, 2.5]): it runs out of
  text sooner than inference thinks, so only a measured report shows it is about to stall.
* **Pause.** A share (``pause_share``, default 20%) hides the tab once: ``pause_after_s`` (uniform,
  default [2, 20] s) after its first token arrived, for ``pause_s`` (uniform, default [15, 45] s).
* **Seeding.** Every request's draws come from its own generator, seeded with ``(seed, req_id)``,
  always in the same order (share draw, factor, pause draw, start, duration, skim factor). So the
  same request gets the same reader at every load and in every configuration compared, and
  changing one share does not reshuffle the other draw. Shares are therefore met in expectation
  (each request is an independent draw), not exactly in every plan.

Reader-clock QoE (:func:`reader_qoe`, exact definition). Let the pauses be disjoint intervals
``[a_k, b_k)`` on the request's clock (seconds since it was due). The reader's clock only runs
while the tab is visible::

    τ(t) = t - Σ_{k: b_k ≤ t} (b_k - a_k)            for t outside every pause
    τ(t) = a_j - Σ_{k: b_k ≤ a_j} (b_k - a_k)        for t in pause j (a_j ≤ t < b_j)

so a token that arrives while the tab is hidden is available at the instant the reader returns.
Token *i*, arrived at ``d_i``, is scored by :func:`core.qoe.qoe` at ``τ(d_i)`` against the spec
``(declared ttft, actual tds)``: expected at ``ttft + i / tds_actual`` on the reader's clock
(nothing is due while hidden; a slow reader does not expect the declared pace) and read at
``c_i = max(τ(d_i), c_{i-1} + 1 / tds_actual)``. A reader without pauses whose pace is the declared
one scores exactly :func:`core.qoe.qoe` of the arrivals. Edge cases, by the definition: a pause
before the first token does not count towards its TTFT; a pause after the last token changes
nothing; tokens that arrive during a pause are read one after another from the reader's return.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.qoe import QoESpec, qoe

__all__ = [
    "Interval",
    "Reader",
    "ReaderConfig",
    "draw_reader",
    "draw_readers",
    "reader_clock_s",
    "reader_qoe",
]

Interval = tuple[float, float]  # [start, end) in seconds since the request was due


def _range(name: str, value: tuple[float, float], low: float) -> None:
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) and math.isfinite(v) for v in value)
        and low <= value[0] <= value[1]
    )
    if not ok:
        raise ValueError(f"{name} must be a pair (lo, hi) with {low:g} <= lo <= hi, got {value!r}")


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """How readers are drawn (module docstring). Validated once; errors quote the bad value."""

    misdeclared_share: float = 0.3  # readers whose actual pace is not the declared one
    pace_factor: tuple[float, float] = (0.5, 0.8)  # their actual pace ÷ declared, uniform
    pause_share: float = 0.2  # readers who hide the tab once
    pause_after_s: tuple[float, float] = (2.0, 20.0)  # hidden this long after the first token
    pause_s: tuple[float, float] = (15.0, 45.0)  # for this long, uniform
    skim_share: float = 0.0  # readers faster than declared (not among the slower ones)
    skim_factor: tuple[float, float] = (1.5, 2.5)  # their actual pace ÷ declared, uniform
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("misdeclared_share", "pause_share", "skim_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ValueError(f"{name} must be a number within [0, 1], got {v!r}")
        if self.misdeclared_share + self.skim_share > 1:
            raise ValueError(f"misdeclared_share + skim_share must be <= 1, got "
                             f"{self.misdeclared_share!r} + {self.skim_share!r}")  # fmt: skip
        _range("pace_factor", self.pace_factor, 1e-3)
        _range("skim_factor", self.skim_factor, 1e-3)
        _range("pause_after_s", self.pause_after_s, 0.0)
        _range("pause_s", self.pause_s, 0.0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True, slots=True)
class Reader:
    """One request's reader."""

    declared: QoESpec  # what the request declares (sent as qoe; what inference assumes)
    read_tds_tok_s: float  # the pace it actually reads at, tokens/s
    pause_after_s: float | None = None  # hides the tab this long after its first token; None: never
    pause_s: float = 0.0  # and stays away this long

    def __post_init__(self) -> None:
        if not (math.isfinite(self.read_tds_tok_s) and self.read_tds_tok_s > 0):
            raise ValueError(f"read_tds_tok_s must be a finite number > 0, got "
                             f"{self.read_tds_tok_s!r}")  # fmt: skip
        if self.pause_after_s is not None and not (
            math.isfinite(self.pause_after_s) and self.pause_after_s >= 0
        ):
            raise ValueError(f"pause_after_s must be None or >= 0, got {self.pause_after_s!r}")
        if not (math.isfinite(self.pause_s) and self.pause_s >= 0):
            raise ValueError(f"pause_s must be a finite number >= 0, got {self.pause_s!r}")

    @property
    def actual(self) -> QoESpec:
        """The spec it is scored against: the declared TTFT, its own pace."""
        return QoESpec(self.declared.ttft_s, self.read_tds_tok_s)

    @property
    def misdeclared(self) -> bool:
        return self.read_tds_tok_s != self.declared.tds_tok_s

    @property
    def pauses(self) -> bool:
        return self.pause_after_s is not None and self.pause_s > 0

    def pause_interval(self, first_token_s: float) -> Interval | None:
        """When it hides, given its first token's arrival (same clock); None if it never does."""
        if not self.pauses:
            return None
        assert self.pause_after_s is not None
        start = first_token_s + self.pause_after_s
        return (start, start + self.pause_s)

    def pauses_during(self, token_times_s: Sequence[float]) -> list[Interval]:
        """The pauses that began while the stream was still arriving (what a client would send;
        a later pause changes no score): the list of at most one interval."""
        if not token_times_s:
            return []
        interval = self.pause_interval(token_times_s[0])
        return [interval] if interval is not None and interval[0] < token_times_s[-1] else []

    def score(self, token_times_s: Sequence[float], pauses_s: Sequence[Interval]) -> float:
        """:func:`reader_qoe` of these arrivals for this reader."""
        return reader_qoe(token_times_s, self.actual, pauses_s)


def draw_reader(req_id: str, declared: QoESpec, config: ReaderConfig) -> Reader:
    """The reader of request ``req_id`` (deterministic in ``config.seed`` and ``req_id``)."""
    rng = random.Random(f"andes-reader:{config.seed}:{req_id}")
    u_pace, factor = rng.random(), rng.uniform(*config.pace_factor)
    u_pause, after = rng.random(), rng.uniform(*config.pause_after_s)
    length = rng.uniform(*config.pause_s)
    skim = rng.uniform(*config.skim_factor)  # drawn last: older draws keep their values
    tds = declared.tds_tok_s
    if u_pace < config.misdeclared_share:
        tds *= factor
    elif u_pace < config.misdeclared_share + config.skim_share:
        tds *= skim
    if u_pause < config.pause_share:
        return Reader(declared, tds, after, length)
    return Reader(declared, tds)


def draw_readers(
    requests: Iterable[tuple[str, QoESpec]], config: ReaderConfig
) -> dict[str, Reader]:
    """Readers by request id, for ``(req_id, declared spec)`` pairs (e.g. a plan's requests)."""
    return {req_id: draw_reader(req_id, spec, config) for req_id, spec in requests}


def _check_pauses(pauses_s: Sequence[Interval]) -> None:
    last_end = -math.inf
    for a, b in pauses_s:
        if not (math.isfinite(a) and math.isfinite(b) and a <= b and a >= last_end):
            raise ValueError(f"pauses must be ordered, disjoint [start, end] intervals, got "
                             f"{list(pauses_s)!r}")  # fmt: skip
        last_end = b


def reader_clock_s(t_s: float, pauses_s: Sequence[Interval]) -> float:
    """``τ(t)``: the reader's visible time at ``t_s`` (module docstring)."""
    hidden = 0.0
    for a, b in pauses_s:
        if t_s <= a:
            break
        if t_s < b:
            return a - hidden
        hidden += b - a
    return t_s - hidden


def reader_qoe(
    token_times_s: Sequence[float], actual: QoESpec, pauses_s: Sequence[Interval] = ()
) -> float:
    """The QoE a reader experiences (module docstring): :func:`core.qoe.qoe` of the arrivals on
    the reader's clock, against ``actual`` (declared TTFT, the reader's own pace)."""
    if not pauses_s:
        return qoe(token_times_s, actual)
    _check_pauses(pauses_s)
    return qoe([reader_clock_s(t, pauses_s) for t in token_times_s], actual)
