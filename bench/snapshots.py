"""Random policy snapshots: many live requests as a policy sees them, for benchmarks and tests.

:func:`random_snapshot` builds the :class:`~engine.policy.RequestView` list an engine adapter would
hand :meth:`~engine.policy.Policy.schedule`, drawn from a :class:`SnapshotMix`: each request's
reader (TTFT and pace), age, prompt, the tokens made so far (delivered between its first token and
now), and, for some, a slack report measured where the reader is (some paused, some read at a pace
other than declared; some on-device requests mid-prefill, some parked ones with a cached prefix).
:func:`random_view` and :func:`random_report` build and re-report one request, for tests that
evolve a snapshot step by step. Two mixes are named: :data:`LOADED` (an engine under memory
pressure, as ``benchmarks/policy_speed.py`` times it) and :data:`MIXED` (every state and report
shape, for checking that two implementations of a policy decide alike).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from core.qoe import QoESpec, QoETracker
from core.slack import SlackRecord
from engine.policy import ReqState, RequestView
from engine.policy.base import ON_DEVICE

__all__ = ["LOADED", "MIXED", "SnapshotMix", "random_report", "random_snapshot", "random_view"]


@dataclass(frozen=True)
class SnapshotMix:
    """What a random snapshot holds. Pairs are uniform ranges; shares are probabilities."""

    ttft_s: tuple[float, float]  # the reader's expected time to first token
    tds_tok_s: tuple[float, float]  # the reader's declared pace
    age_s: float  # arrivals up to this long before now
    first_token_s: tuple[float, float]  # first token this long after arrival
    prompt_tokens: tuple[int, int]
    output_tokens: tuple[int, int]  # made so far by a request that has run
    # The states of the requests beyond the first ``running`` (which run): (state, weight).
    states: tuple[tuple[ReqState, float], ...]
    slack_share: float  # of the requests that have made tokens, those with a slack report
    slack_lag_tokens: int  # a report's delivered - consumed is up to this
    slack_age_s: float  # a report was measured up to this long ago
    paused_share: float  # of the reports, those of a paused reader
    slack_tds_tok_s: tuple[float, float] | None  # a report's pace (None: the declared one)
    report_drop_share: float = 0.0  # random_report: of the requests not reported, those cleared
    pending_share: float = 0.0  # of the on-device requests, those with prompt still to compute
    pending_tokens: int = 0  # ...up to this many tokens
    cached: bool = False  # a preempted request has a random prefix of its prompt still cached
    block_size: int = 16  # KV block size, tokens


LOADED = SnapshotMix(
    ttft_s=(0.5, 2.0), tds_tok_s=(3.0, 10.0), age_s=120.0, first_token_s=(0.2, 3.0),
    prompt_tokens=(20, 1500), output_tokens=(1, 600),
    states=((ReqState.WAITING, 0.9), (ReqState.PREEMPTED, 0.1)),
    slack_share=0.25, slack_lag_tokens=40, slack_age_s=0.5, paused_share=0.1,
    slack_tds_tok_s=None,
)  # fmt: skip
"""An engine under memory pressure: long prompts and outputs, a tenth of the waiting preempted,
a quarter of the streams with a fresh report (some paused)."""

MIXED = SnapshotMix(
    ttft_s=(0.2, 2.0), tds_tok_s=(2.0, 12.0), age_s=60.0, first_token_s=(0.1, 2.0),
    prompt_tokens=(1, 400), output_tokens=(1, 200),
    states=tuple((state, 1.0) for state in ReqState),
    slack_share=0.3, slack_lag_tokens=30, slack_age_s=2.0, paused_share=0.15,
    slack_tds_tok_s=(2.0, 12.0), report_drop_share=0.1, pending_share=0.25, pending_tokens=50,
    cached=True,
)  # fmt: skip
"""Every state in equal shares, reports of every age up to 2 s and of readers off their declared
pace, partial prefills and cached prefixes: the shapes on which two implementations of a policy
could disagree."""


def random_snapshot(rng: random.Random, n: int, now_s: float, mix: SnapshotMix,
                    running: int = 0) -> list[RequestView]:
    """``n`` requests ``r0 … r{n-1}`` at ``now_s``: the first ``running`` run, the others' states
    are drawn from ``mix.states``."""
    return [random_view(rng, f"r{i}", now_s, mix, ReqState.RUNNING if i < running else None)
            for i in range(n)]  # fmt: skip


def random_view(rng: random.Random, req_id: str, now_s: float, mix: SnapshotMix,
                state: ReqState | None = None) -> RequestView:
    """One request at ``now_s`` in ``state`` (None: drawn from ``mix.states``)."""
    if state is None:
        states, weights = zip(*mix.states, strict=True)
        state = rng.choices(states, weights)[0]
    spec = QoESpec(ttft_s=rng.uniform(*mix.ttft_s), tds_tok_s=rng.uniform(*mix.tds_tok_s))
    arrival = now_s - rng.uniform(0.0, mix.age_s)
    tracker = QoETracker(spec, arrival_s=arrival)
    made = 0 if state is ReqState.WAITING else rng.randint(*mix.output_tokens)
    _deliver(rng, tracker, made, arrival + rng.uniform(*mix.first_token_s), now_s)
    prompt = rng.randint(*mix.prompt_tokens)
    pending = 0
    if state in ON_DEVICE and mix.pending_tokens and rng.random() < mix.pending_share:
        pending = rng.randint(1, mix.pending_tokens)
    cached = rng.randint(0, prompt) if mix.cached and state is ReqState.PREEMPTED else 0
    view = RequestView(
        req_id=req_id, arrival_s=arrival, spec=spec, state=state, prompt_tokens=prompt,
        output_tokens=made, kv_blocks=-(-(prompt + made) // mix.block_size), tracker=tracker,
        pending_tokens=pending, cached_tokens=cached,
    )  # fmt: skip
    random_report(rng, view, now_s, mix)
    return view


def random_report(rng: random.Random, view: RequestView, now_s: float, mix: SnapshotMix) -> None:
    """Maybe a fresh slack report for ``view`` (one that has made tokens), else maybe none."""
    made = view.output_tokens
    if made and rng.random() < mix.slack_share:
        tds = rng.uniform(*mix.slack_tds_tok_s) if mix.slack_tds_tok_s else view.spec.tds_tok_s
        view.slack = SlackRecord(
            stream_id=view.req_id, delivered=made,
            consumed=max(made - rng.randint(0, mix.slack_lag_tokens), 0), tds_tok_s=tds,
            paused=rng.random() < mix.paused_share, t_s=now_s - rng.uniform(0.0, mix.slack_age_s),
        )  # fmt: skip
    elif rng.random() < mix.report_drop_share:
        view.slack = None


def _deliver(rng: random.Random, tracker: QoETracker, made: int, first_s: float,
             now_s: float) -> None:
    """``made`` tokens from ``first_s`` on, spread (jittered) up to ``now_s``, never beyond it."""
    step = max((now_s - first_s) / made, 1e-3) if made else 0.0
    t = first_s
    for _ in range(made):
        tracker.add(min(t, now_s))
        t += step * rng.uniform(0.5, 1.5)
