"""What ``andes`` knows about each reader, and the guards on top of Algorithm 1.

Both the definition (:mod:`engine.policy.andes.algorithm`) and the fast path
(:mod:`engine.policy.andes.fast`) read requests through :func:`row_of` (what does not depend on
``now``) and the rules below (what does). Each rule has a scalar form, which the definition
uses, and an array form beside it, which the fast path uses; tests check the two agree.

**Measured readers.** A slack report younger than ``slack_staleness_s`` replaces the server's
inference of where the reader is: it needs its next token at ``now + slack`` (plus, when
something is buffered, half a token's reading: the rest of the token it is on), reads at the
report's pace and expects that pace (its QoE's expected curve). Why: the gateway sees the reader
(a hidden tab, a reader slower or faster than declared, text buffered at the client); the server
only sees what it sent. A report made before the first token says nothing about the reader (its
first token is due at its ``ttft`` whatever the buffer says), and an older report is ignored.

**Paused readers.** A hidden tab reads nothing, so serving it is worth nothing — but it may come
back at any moment. It is valued as if it came back now until ``resume_cushion_s`` of reading is
buffered for it; with that much it needs nothing while away and yields, and it comes back with
the cushion to cover its readmission.

**Starvation floor.** ``Q_serve − Q_wait`` of a request that keeps waiting decays roughly as
``(Δt / wait)²``, and per KV block a long prompt is worth little from the start, so under
sustained load the value order alone would leave such a request waiting until arrivals stop:
TTFT tails of minutes, far beyond FCFS's. A request whose reader has been *waiting* for more
than ``starvation_s`` now (for its first token, or, parked or slow, for its next one) is
protected: starving requests go first, the one waiting the longest first, which bounds the tail
by FCFS's order among them. What counts is the wait now, not how late the stream has been: a
stream that started late but is served at its reader's pace is not starving, and protecting it
for the rest of its life would leave nothing to share the cache with under deep overload.

**Anti-thrash.** A request (re)admitted less than ``min_run_s`` seconds (or ``min_run_steps``
steps) ago is not parked: its admission was valued over the next horizon, and parking it sooner
pays a recompute for a value the knapsack never counted. Holding it is free and still allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.slack import SlackRecord
from engine.policy.base import ON_DEVICE, ReqState, RequestView, step_blocks

__all__ = [
    "Reader",
    "Row",
    "reader_at",
    "readers_at",
    "row_of",
    "starving",
    "starving_at",
]

STATE_CODE = {ReqState.WAITING: 0, ReqState.PREEMPTED: 1, ReqState.RUNNING: 2, ReqState.HELD: 3}


@dataclass(frozen=True, slots=True)
class Row:
    """One request's inputs that do not depend on ``now`` (re-read only when its view changes)."""

    req_id: str
    state: int  # STATE_CODE
    arrival: float  # absolute seconds
    ttft: float  # spec ttft_s
    g: float  # 1 / spec tds_tok_s
    ntok: int  # tokens delivered so far
    last_read: float  # when the reader reads its last token, since arrival (tracker); -inf: none
    tokens: int  # prompt + output: the context
    blocks: int  # KV blocks for its next step (step_blocks)
    pending: int  # on device: prompt tokens still to prefill beyond one step's token
    cached: int  # waiting/preempted: tokens a readmission gets back without computing
    report_t: float  # latest slack report: when (policy clock); nan when none usable
    report_buf: float  # its buffered reading, seconds
    report_paused: bool
    report_g: float  # 1 / its pace

    @property
    def on_device(self) -> bool:
        return self.state >= 2

    @property
    def need_inferred(self) -> float:
        """When the reader needs token ``ntok`` by the tracker (absolute; -inf before any)."""
        return self.arrival + self.last_read + self.g if self.ntok else -math.inf



def row_of(view: RequestView, block_size: int) -> Row:
    """The ``now``-free inputs of ``view``."""
    spec, tr = view.spec, view.tracker
    g = 1.0 / spec.tds_tok_s
    n = tr.num_tokens
    rep: SlackRecord | None = view.slack
    usable = rep is not None and rep.delivered > 0  # before the first token it says nothing
    return Row(
        req_id=view.req_id,
        state=STATE_CODE[view.state],
        arrival=view.arrival_s,
        ttft=spec.ttft_s,
        g=g,
        ntok=n,
        last_read=tr.last_read_s if n else -math.inf,
        tokens=view.prompt_tokens + view.output_tokens,
        blocks=step_blocks(view, block_size),
        pending=view.pending_tokens if view.state in ON_DEVICE else 0,
        cached=0 if view.state in ON_DEVICE else view.cached_tokens,
        report_t=rep.t_s if usable else math.nan,  # type: ignore[union-attr]
        report_buf=rep.buffered / rep.tds_tok_s if usable else 0.0,  # type: ignore[union-attr]
        report_paused=bool(rep.paused) if usable else False,  # type: ignore[union-attr]
        report_g=1.0 / rep.tds_tok_s if usable else g,  # type: ignore[union-attr]
    )


@dataclass(frozen=True, slots=True)
class Reader:
    """Where a request's reader is at ``now``: the rules of the module docstring applied."""

    need: float  # when it needs its next token (absolute; inf: not while paused; -inf: none yet)
    g_read: float  # 1 / the pace it reads at
    g_expect: float  # 1 / the pace its QoE expects
    due: float  # when waiting starts to cost it QoE: ``need``, or its first token's ttft
    stall_from: float  # since when it has been waiting, for the starvation floor


def reader_at(row: Row, now_s: float, staleness_s: float, cushion_s: float) -> Reader:
    """The reader of ``row`` at ``now_s`` (scalar; :func:`readers_at` is the array form)."""
    need, g_read, g_expect, stall_from = row.need_inferred, row.g, row.g, row.need_inferred
    age = now_s - row.report_t
    if age <= staleness_s:  # a fresh report (nan compares false: none)
        buf = row.report_buf
        if row.report_paused:
            need = now_s + buf if buf < cushion_s else math.inf
        else:
            # The rest of the token it is on: half a token's reading, when anything is buffered.
            need = now_s + (buf - max(age, 0.0)) + (0.5 * row.report_g if buf > 0 else 0.0)
        g_read = g_expect = row.report_g
        # Still reading from its buffer: it is not stalled. With nothing left it has been
        # waiting since the tracker says it ran out (it cannot read what was not delivered).
        if row.report_paused or need - 0.5 * row.report_g > now_s:
            stall_from = need
    first = row.arrival + row.ttft
    due = first if need == -math.inf else need
    return Reader(need, g_read, g_expect, due, first if stall_from == -math.inf else stall_from)


def readers_at(
    c: dict[str, np.ndarray], now_s: float, staleness_s: float, cushion_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`reader_at` over columns ``c`` (the fields of :class:`Row` as arrays):
    (need, g_read, g_expect, due, stall_from)."""
    age = now_s - c["report_t"]
    fresh = age <= staleness_s  # nan: False
    buf, rg = c["report_buf"], c["report_g"]
    paused = c["report_paused"] > 0.0
    measured = np.where(
        paused,
        np.where(buf < cushion_s, now_s + buf, math.inf),
        now_s + (buf - np.maximum(age, 0.0)) + np.where(buf > 0, 0.5 * rg, 0.0),
    )
    inferred = np.where(c["ntok"] > 0, c["arrival"] + c["last_read"] + c["g"], -math.inf)
    need = np.where(fresh, measured, inferred)
    g_read = np.where(fresh, rg, c["g"])
    reading = fresh & (paused | (measured - 0.5 * rg > now_s))
    stall = np.where(reading, need, inferred)
    first = c["arrival"] + c["ttft"]
    due = np.where(need == -math.inf, first, need)
    return need, g_read, g_read, due, np.where(stall == -math.inf, first, stall)


def starving(row: Row, reader: Reader, now_s: float, limit_s: float) -> float:
    """How long ``row``'s reader has been late if that is more than ``limit_s``, else -inf."""
    stall = now_s - reader.stall_from
    return stall if stall > limit_s else -math.inf


def starving_at(
    c: dict[str, np.ndarray], stall_from: np.ndarray, now_s: float, limit_s: float
) -> np.ndarray:
    """:func:`starving` over columns ``c``."""
    stall = now_s - stall_from
    return np.where(stall > limit_s, stall, -math.inf)
