"""``andes`` — the paper's QoE-aware scheduler (Liu et al., arXiv 2404.16283, §4, Algorithm 1).

Each triggered step values every live request by what serving it over the next ``horizon_s`` adds
to its QoE, ``Q_serve - Q_wait`` (the closed form of :func:`core.qoe.predict_serve_gain`), divides
by its KV footprint, and packs the densest greedily into the KV cache and the batch limit. Running
requests that fall out are preempted. With the paper's cost controls:

* **Batch-size pruning** (§4.3): only a few batch sizes ``B`` are tried (``batch_fractions`` of the
  largest possible); each values the requests at ``L = capacity.token_latency_s(B)`` and the best
  total gain wins.
* **Selective triggering** (§4.3): the knapsack runs only under memory pressure (work that FCFS
  would leave waiting, or would have to preempt) or when the per-token latency of the FCFS batch is
  slower than the strictest reader in it (``L > 1 / max tds``). Otherwise the step is plain FCFS.
  Under mere queueing a triggered step preempts nobody (see the refiner): it only orders who fills
  the room FCFS would fill.
* **Overhead-aware refinement** (paper v2, replacing v1's fixed preemption cap): a running request
  is preempted only if what its blocks buy (at the value density of the *due* admissions) minus
  its own gain exceeds the QoE the whole batch loses while it is recomputed later
  (``capacity.prefill_latency_s`` of its tokens, at the batch's gain per second of service), and
  only as many go, lowest priority first, as the due admissions need room for. A waiting request
  is *due* when, admitted one step later, its prefill and first token would come after its first
  token's ``ttft`` (or its reader's next read): until then waiting costs it no QoE, so transient
  queueing that FCFS drains in time preempts nobody.
* **Starvation floor**: ``Q_serve - Q_wait`` of a request that keeps waiting decays roughly as
  ``(Δt / wait)²`` (the QoE's expected area grows with the wait), and per KV block a long prompt
  is worth little from the start, so under sustained load the density order alone never picks
  it: it waits until arrivals stop. Maximizing average QoE favours this; a bounded wait is a
  service guarantee on top. A request whose reader has been late more than ``starvation_s``
  (first token or any later read) is protected while it runs, and when none such runs, the one
  late the longest is admitted first: one at a time, so the floor costs the others at most one
  request's share of the batch. 30 s is six horizons: by then its horizon gain is ~2% of a
  fresh request's, below any footprint ratio in the paper's trace (most prompts take a few KV
  blocks, the longest over 100), so without the floor it would not be picked at all.
* **Anti-thrash**: a request (re)admitted less than ``min_run_steps`` steps or ``min_run_s``
  seconds ago is not preempted, so a request is never parked just after paying its prefill; the
  horizon gain is monotone in delivery time, so no request gains value from having its last
  tokens delayed. ``min_run_s`` defaults to one horizon: its admission was valued over the next
  ``horizon_s``, and parking it sooner pays a recompute for a value the knapsack never counted.
  Measured in the simulator calibrated to vLLM on CPU (BENCHMARKS.md, closed-loop), the step
  count alone (8 steps, under half a second there) let each request be preempted ~6 times and
  cost half the throughput; with the 5 s floor, ~3 times.

Measured slack: a :class:`SlackRecord` younger than ``slack_staleness_s`` replaces the server's
inference of where the reader is — the reader needs the next token at ``now + slack`` (plus, when
something is buffered, half a token's reading: the rest of the token it is on), reads at the
report's pace, and expects that pace (its QoE's expected curve). A paused reader is valued as if
it came back now until ``resume_cushion_s`` of reading is buffered for it; after that it needs
nothing while away, so serving it is worth nothing and it yields, and it comes back with that
cushion to cover its readmission. Older reports are ignored (the tracker's inference is used), and
so is a report before the first token (the reader's first token is due at its ``ttft``). The
starvation floor counts a measured reader with nothing buffered as stalled since the tracker
says it ran out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import ne

import numpy as np

from core.slack import SlackRecord
from engine.policy.base import (
    Capacity,
    Decision,
    Policy,
    ReqState,
    RequestView,
)
from engine.policy.fcfs import fcfs_decision
from engine.policy.horizon import serve_gain
from engine.policy.registry import build_config, register_policy

__all__ = ["AndesConfig", "AndesPolicy"]


@dataclass(frozen=True, slots=True)
class AndesConfig:
    """Options of the ``andes`` policy."""

    horizon_s: float = 5.0  # look-ahead Δt over which Q_serve and Q_wait are compared
    batch_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the largest batch, to try
    slack_staleness_s: float = 1.0  # slack reports older than this are ignored
    # A paused reader is served until this much reading is buffered, then yields (see module doc).
    resume_cushion_s: float = 5.0
    min_run_steps: int = 8  # steps after admission during which a request is not preempted
    min_run_s: float = 5.0  # and seconds (see "Anti-thrash")
    overhead_aware: bool = True  # refine preemptions by their recompute cost (paper v2)
    latency_trigger: bool = True  # also trigger when the batch is slower than its strictest reader
    # A reader stalled (or first token late) longer than this is starving: see "Starvation floor".
    starvation_s: float = 30.0

    def __post_init__(self) -> None:
        m = self.min_run_s
        if isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m < math.inf:
            raise ValueError(f"min_run_s must be a finite number >= 0, got {m!r}")
        for name in ("horizon_s", "slack_staleness_s", "starvation_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or v == math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        fr = self.batch_fractions
        if not (
            isinstance(fr, tuple)
            and fr
            and all(isinstance(f, int | float) and 0 < f <= 1 for f in fr)
        ):
            raise ValueError(f"batch_fractions must be a non-empty tuple of (0, 1], got {fr!r}")
        if isinstance(self.min_run_steps, bool) or not (
            isinstance(self.min_run_steps, int) and self.min_run_steps >= 0
        ):
            raise ValueError(f"min_run_steps must be an integer >= 0, got {self.min_run_steps!r}")
        c = self.resume_cushion_s
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c < math.inf:
            raise ValueError(f"resume_cushion_s must be a finite number >= 0, got {c!r}")
        for name in ("overhead_aware", "latency_trigger"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


@register_policy
class AndesPolicy(Policy):
    """QoE-aware knapsack scheduling (Algorithm 1), triggered only when it can matter."""

    name = "andes"

    def __init__(self, **options: object) -> None:
        self.config: AndesConfig = build_config(AndesConfig, self.name, options)  # type: ignore[assignment]
        self._step = 0
        self._admitted_at: dict[str, tuple[int, float]] = {}  # req_id -> (re)admitted (step, s)
        self._snapshot = _Snapshot()  # per-request columns, re-read only where a view changed
        self._candidates = _MIN_CANDIDATES  # waiting requests valued exactly (see _knapsack)
        self.last_triggered = False  # whether the last step ran the knapsack (for benchmarks)
        self._plain_ids: list[str] = []  # the requests of the last all-running FCFS step
        self._plain_run: list[str] = []  # and its decision's order

    # -- the step -------------------------------------------------------------------------------

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        step = self._step
        self._step += 1
        snap = self._snapshot
        snap.sync(requests, capacity.block_size)
        v = snap.values(now_s, self.config)
        n_run = int(v.running.sum())
        # FCFS leaves work waiting or preempts exactly when everything together does not fit.
        pressure = len(requests) > capacity.max_batch or snap.total_blocks() > capacity.kv_blocks
        if pressure:
            self.last_triggered = True
            decision = self._knapsack(now_s, requests, capacity)
        elif not pressure and n_run == len(requests):
            # Everything runs, nothing waits: FCFS's order of the running requests, kept while
            # the same requests run (the common decode step; arrivals never change).
            if snap.ids != self._plain_ids:
                self._plain_ids = snap.ids
                self._plain_run = fcfs_decision(requests, capacity).run
            decision = Decision(run=list(self._plain_run), preempt=[])
            self.last_triggered = self.config.latency_trigger and _too_slow(
                v, capacity, len(decision.run)
            )
            if self.last_triggered:
                decision = self._knapsack(now_s, requests, capacity)
        else:
            decision = fcfs_decision(requests, capacity)
            self.last_triggered = self.config.latency_trigger and _too_slow(
                v, capacity, len(decision.run)
            )
            if self.last_triggered:
                decision = self._knapsack(now_s, requests, capacity)
        self._note_admissions(step, now_s, decision)
        return decision

    def _triggered(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity, base: Decision
    ) -> bool:
        """Whether the knapsack runs, given the FCFS decision ``base`` (straightforwardly).

        :meth:`schedule` decides the same from the snapshot's columns.
        """
        if base.preempt or len(base.run) < len(requests):
            return True  # memory pressure: FCFS must preempt or leave work waiting
        cfg = self.config
        if not cfg.latency_trigger or not base.run:
            return False
        max_tds = 0.0
        for r in requests:
            tds = r.spec.tds_tok_s
            rep = r.slack
            if _informs(rep, now_s, cfg.slack_staleness_s):
                assert rep is not None
                needs = _measured_need(rep, now_s, cfg.resume_cushion_s) < math.inf
                tds = rep.tds_tok_s if needs else 0.0
            max_tds = max(max_tds, tds)
        return max_tds > 0.0 and capacity.token_latency_s(len(base.run)) > 1.0 / max_tds

    def _note_admissions(self, step: int, now_s: float, d: Decision) -> None:
        running = self._snapshot.running_ids()
        for req_id in d.run:
            if req_id not in running:
                self._admitted_at[req_id] = (step, now_s)
        if step % 64 == 0:  # forget finished requests now and then
            live = set(self._snapshot.ids)
            self._admitted_at = {k: v for k, v in self._admitted_at.items() if k in live}

    def _just_admitted(self, now_s: float) -> Callable[[str], bool]:
        """Whether a running request is still protected by the anti-thrash rule."""
        cfg = self.config
        after_step, after_s = self._step - 1 - cfg.min_run_steps, now_s - cfg.min_run_s
        get = self._admitted_at.get
        never = (-(10**9), -math.inf)

        def just(req_id: str) -> bool:
            step, t_s = get(req_id, never)
            return step > after_step or t_s > after_s

        return just

    # -- Algorithm 1, fast ----------------------------------------------------------------------

    def _knapsack(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        """Algorithm 1 with the same result as :meth:`_knapsack_reference`, valuing fewer requests.

        Every running request is valued exactly; of the waiting ones, only the ``K`` with the
        highest *upper bound* on value density (their gain with no prefill at the fastest
        candidate latency: the gain never grows with a later first token or a slower batch).
        The result is exact when every packing stopped full (no batch slot or KV block left)
        at a request denser than the best bound left out: the requests left out sort after that
        point in the full order, so no packing could have reached them. Otherwise ``K`` doubles,
        up to every waiting request.
        """
        cfg = self.config
        snap = self._snapshot
        n_req = len(requests)
        b_max = min(capacity.max_batch, n_req)
        sizes = sorted({max(1, round(f * b_max)) for f in cfg.batch_fractions})
        lats = [capacity.token_latency_s(b) for b in sizes]

        v = snap.values(now_s, cfg)
        rel_now = now_s - v.arrival
        h = rel_now + cfg.horizon_s
        need_rel = v.need - v.arrival
        waiting = np.flatnonzero(~v.running)
        running = np.flatnonzero(v.running)
        floor = _starvation_floor(now_s, v.running, v.read_late, v.starve_due, cfg.starvation_s)
        always = np.union1d(running, np.flatnonzero(floor & ~v.running))

        k = waiting.size
        bound = np.empty(0)
        if waiting.size > self._candidates:
            w, lat = waiting, min(lats)
            gain_ub = serve_gain(
                h[w], v.ttft[w], v.g[w], v.ntok[w], rel_now[w] + lat, need_rel[w], v.g_r[w], lat
            )
            bound = gain_ub / v.blocks[w]
            k = self._candidates
        while True:
            if k >= waiting.size:
                sub, thr = np.arange(n_req), -math.inf
            else:
                part = np.argpartition(-bound, k)
                sub = np.union1d(always, waiting[part[:k]])
                thr = float(bound[part[k]])
                thr += abs(thr) * 1e-9 + 1e-12  # strictly above, with room for rounding
            found = self._knapsack_over(
                sub, thr, now_s, requests, capacity, sizes, lats, v, h, floor[sub]
            )
            if found is not None:
                break
            k *= 2
        first_try = k <= self._candidates
        self._candidates = max(_MIN_CANDIDATES, k * 7 // 8 if first_try else k)
        run, out = found
        ids = snap.ids
        return Decision(run=[ids[i] for i in run.tolist()], preempt=[ids[i] for i in out.tolist()])

    def _knapsack_over(
        self,
        sub: np.ndarray,
        thr: float,
        now_s: float,
        requests: Sequence[RequestView],
        capacity: Capacity,
        sizes: list[int],
        lats: list[float],
        v: _Values,
        h_all: np.ndarray,
        floor: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_knapsack_reference` on the requests ``sub`` (ascending indices), or None.

        ``thr`` bounds the value density of every request left out; None when a packing might
        have reached one of them (see :meth:`_knapsack`). Returns (run, preempt) as indices.
        """
        cfg = self.config
        m = sub.size
        arrival, blocks, running = v.arrival[sub], v.blocks[sub], v.running[sub]
        just = self._just_admitted(now_s)
        ids = self._snapshot.ids
        protected = np.zeros(m, dtype=bool)
        prefill = np.zeros(m)
        run_at = np.flatnonzero(running)
        if run_at.size:
            protected[run_at] = [just(ids[i]) for i in sub[run_at].tolist()]
        protected |= floor
        wait_at = np.flatnonzero(~running)
        if wait_at.size:
            prefill_of = capacity.prefill_latency_s
            prefill[wait_at] = [prefill_of(t) for t in v.tokens[sub[wait_at]].tolist()]

        rel_now = now_s - arrival
        lat_col = np.array(lats)[:, None]
        gains = serve_gain(
            h_all[sub], v.ttft[sub], v.g[sub], v.ntok[sub], (rel_now + prefill)[None, :] + lat_col,
            (v.need[sub] - arrival), v.g_r[sub], lat_col,
        )  # fmt: skip
        best: tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
        for b, lat, gain in zip(sizes, lats, gains, strict=True):
            density = gain / blocks
            order = np.lexsort((arrival, ~running, -density, ~protected))
            chosen, full = _pack_full(order, blocks, capacity.kv_blocks, b)
            if thr > -math.inf and not (full and _beyond(chosen, protected, density, thr)):
                return None
            total = float(gain[chosen].sum())
            if best is None or total > best[0]:
                best = (total, lat, gain, order, chosen)
        assert best is not None
        _, lat, gain, order, chosen = best
        selected = np.zeros(m, dtype=bool)
        selected[chosen] = True
        urgent = ~running & (now_s + prefill + 2.0 * lat >= _due(v)[sub])
        pos = np.empty(m, dtype=np.int64)
        pos[order] = np.arange(m)
        prefill_of = capacity.prefill_latency_s
        tokens = v.tokens[sub]
        tier = _tiers(
            gain, blocks, running, selected, urgent,
            lambda victims: np.array([prefill_of(t) for t in tokens[victims].tolist()]),
            cfg.horizon_s if cfg.overhead_aware else None, pos, capacity,
        )  # fmt: skip
        final = np.lexsort((pos, tier))
        run, full = _pack_full(final, blocks, capacity.kv_blocks, capacity.max_batch)
        if thr > -math.inf:
            # Tiers 0-3 come before every request left out (tier 4); within tier 4, by density.
            early = (tier < 4) | protected
            if not (full and _beyond(run, early, gain / blocks, thr)):
                return None
        in_run = np.zeros(m, dtype=bool)
        in_run[run] = True
        out = final[running[final] & ~in_run[final]][::-1]  # lowest priority goes first
        return sub[run], sub[out]

    # -- Algorithm 1 ----------------------------------------------------------------------------

    def _knapsack_reference(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        """Algorithm 1 over the whole snapshot, straightforwardly: the definition of a decision.

        :meth:`schedule` takes the fast path (:meth:`_knapsack`); tests check the two agree.
        """
        cfg = self.config
        n_req = len(requests)
        bs = capacity.block_size
        stale = cfg.slack_staleness_s
        just = self._just_admitted(now_s)
        prefill_of = capacity.prefill_latency_s
        inf = math.inf
        running_state = ReqState.RUNNING

        # One pass over the snapshot into plain rows (numpy item assignment is slower).
        rows = []
        append = rows.append
        for r in requests:
            spec, tr = r.spec, r.tracker
            gi = 1.0 / spec.tds_tok_s
            n = tr.num_tokens
            tokens = r.prompt_tokens + r.output_tokens
            rep = r.slack
            g_e = gi  # the pace the reader expects (its QoE's expected curve)
            need = starve = tr.arrival_s + tr.last_read_s + gi if n else -inf
            g_r = gi
            if _informs(rep, now_s, stale):
                assert rep is not None
                need = _measured_need(rep, now_s, cfg.resume_cushion_s)
                g_r = 1.0 / rep.tds_tok_s
                g_e = g_r if math.isfinite(g_r) else gi
                if rep.paused or rep.slack_s(now_s) > 0.0:
                    starve = need
            if r.state is running_state:
                run, prot, pre = 1.0, float(just(r.req_id)), 0.0
            else:
                run, prot, pre = 0.0, 0.0, prefill_of(tokens)
            blocks = max(r.kv_blocks, -(-tokens // bs), 1)
            late = _read_late(r)
            append((r.arrival_s, spec.ttft_s, g_e, n, need, g_r, pre, blocks, run, prot, late,
                    starve))  # fmt: skip
        cols = np.array(rows).T
        arrival, ttft, g, ntok, need, g_r, prefill, blocks = cols[:8]
        running, protected = cols[8] > 0.0, cols[9] > 0.0
        due = np.where(need == -inf, arrival + ttft, need)
        starve_due = np.where(cols[11] == -inf, arrival + ttft, cols[11])
        protected |= _starvation_floor(now_s, running, cols[10], starve_due, cfg.starvation_s)

        rel_now = now_s - arrival
        h = rel_now + cfg.horizon_s
        need_rel = need - arrival
        b_max = min(capacity.max_batch, n_req)
        best: tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
        for b in sorted({max(1, round(f * b_max)) for f in cfg.batch_fractions}):
            lat = capacity.token_latency_s(b)
            gain = serve_gain(h, ttft, g, ntok, rel_now + prefill + lat, need_rel, g_r, lat)
            # Protected requests first, then by value per KV block; ties: running, then oldest.
            order = np.lexsort((arrival, ~running, -(gain / blocks), ~protected))
            chosen = _pack(order, blocks, capacity.kv_blocks, b)
            total = float(gain[chosen].sum())
            if best is None or total > best[0]:
                best = (total, lat, gain, order, chosen)
        assert best is not None
        _, lat, gain, order, chosen = best
        selected = np.zeros(n_req, dtype=bool)
        selected[chosen] = True
        urgent = ~running & (now_s + prefill + 2.0 * lat >= due)
        pos = np.empty(n_req, dtype=np.int64)
        pos[order] = np.arange(n_req)
        tier = _tiers(
            gain, blocks, running, selected, urgent,
            lambda victims: np.array(
                [prefill_of(requests[i].prompt_tokens + requests[i].output_tokens) for i in victims]
            ),
            cfg.horizon_s if cfg.overhead_aware else None, pos, capacity,
        )  # fmt: skip
        # Final order: what the knapsack chose (running first), victims worth keeping, the due
        # admissions, the other admissions, then the rest; packing again trims what no longer fits.
        final = np.lexsort((pos, tier))
        run = _pack(final, blocks, capacity.kv_blocks, capacity.max_batch)
        in_run = np.zeros(n_req, dtype=bool)
        in_run[run] = True
        out = final[running[final] & ~in_run[final]][::-1]  # lowest priority goes first
        return Decision(
            run=[requests[i].req_id for i in run], preempt=[requests[i].req_id for i in out]
        )


def _tiers(
    gain: np.ndarray,
    blocks: np.ndarray,
    running: np.ndarray,
    selected: np.ndarray,
    urgent: np.ndarray,
    recompute_s: Callable[[np.ndarray], np.ndarray],
    horizon_s: float | None,
    pos: np.ndarray,
    capacity: Capacity,
) -> np.ndarray:
    """The overhead-aware refiner: each request's tier in the final order (0 first, 4 last).

    0: running and chosen; 1: running, not chosen, but not worth preempting; 2: chosen and due
    (``urgent``: admitted at the next step instead, after one more iteration of ``L``, its prefill
    plus a token would come after it is due); 3: chosen, not yet due; 4: the rest.
    A victim goes only if what its blocks buy, at the value density of the *due* admissions,
    minus its own gain, exceeds the QoE the batch loses while it is recomputed later
    (``recompute_s``, at the batch's gain per second). Admissions that are not due yet do not
    pay for preemptions: waiting costs them no QoE until they are due, and by then the batch may
    have freed room by itself (transient queueing that FCFS absorbs). And only as many victims
    go, lowest priority (``pos``) first, as the due admissions need room for: the value density
    prices the blocks they fill, not blocks freed for requests that could wait. ``horizon_s``
    None turns the refiner off (every victim goes).
    """
    keep_victim = np.zeros(gain.size, dtype=bool)
    victims = np.flatnonzero(running & ~selected)
    if horizon_s is not None and victims.size:
        paying = selected & urgent
        paying_blocks = blocks[paying].sum()
        density_paying = gain[paying].sum() / paying_blocks if paying_blocks else 0.0
        loss_per_s = gain[selected].sum() / horizon_s  # the batch's gain per second served
        benefit = density_paying * blocks[victims] - gain[victims]
        keep_victim[victims] = benefit <= loss_per_s * recompute_s(victims)
        # Room the due admissions lack beside every running request; free it from the bottom.
        stay = running
        lack_blocks = blocks[stay].sum() + blocks[paying].sum() - capacity.kv_blocks
        lack_slots = int(stay.sum() + paying.sum()) - capacity.max_batch
        for i in victims[np.argsort(-pos[victims])].tolist():
            if keep_victim[i]:
                continue
            if lack_blocks <= 0 and lack_slots <= 0:
                keep_victim[i] = True
            else:
                lack_blocks -= blocks[i]
                lack_slots -= 1
    return np.where(
        selected & running, 0,
        np.where(keep_victim, 1, np.where(selected & urgent, 2, np.where(selected, 3, 4))),
    )  # fmt: skip


def _due(v: _Values) -> np.ndarray:
    """When each reader needs its next token (absolute): its first token's ``ttft`` if none came."""
    return np.where(v.need == -math.inf, v.arrival + v.ttft, v.need)


def _too_slow(v: _Values, capacity: Capacity, batch: int) -> bool:
    """The latency trigger: a batch of ``batch`` is slower than its strictest live reader."""
    if not batch:
        return False
    tds = np.where(v.need == math.inf, 0.0, 1.0 / v.g_r)  # a paused reader needs nothing
    max_tds = float(tds.max()) if tds.size else 0.0
    return max_tds > 0.0 and capacity.token_latency_s(batch) > 1.0 / max_tds


def _pack(order: np.ndarray, blocks: np.ndarray, kv_blocks: int, max_batch: int) -> np.ndarray:
    """Indices taken greedily in ``order`` while they fit (skipping those that do not).

    The same result as :func:`engine.policy.packing.greedy_pack`.
    """
    return _pack_full(order, blocks, kv_blocks, max_batch)[0]


def _pack_full(
    order: np.ndarray, blocks: np.ndarray, kv_blocks: int, max_batch: int
) -> tuple[np.ndarray, bool]:
    """:func:`_pack`, and whether it ended full (no slot or no KV block left).

    The leading run that fits is found by a cumulative sum; only the tail after the first misfit
    is walked in Python. A packing that ended full never looked past its last pick.
    """
    sizes = blocks[order]
    k = min(int(np.searchsorted(np.cumsum(sizes), kv_blocks, side="right")), max_batch)
    free = kv_blocks - float(sizes[:k].sum())
    slots = max_batch - k
    if k == len(order) or k == max_batch:
        return order[:k], slots == 0 or free <= 0
    # Walk only the candidates small enough to fit what is left after the leading run.
    tail = np.flatnonzero(sizes[k + 1 :] <= free) + k + 1
    extra = []
    for j, size in zip(tail.tolist(), sizes[tail].tolist(), strict=True):
        if slots == 0 or free <= 0:
            break
        if size <= free:
            extra.append(j)
            free -= size
            slots -= 1
    taken = np.concatenate([order[:k], order[np.array(extra, dtype=np.int64)]])
    return taken, slots == 0 or free <= 0


def _beyond(taken: np.ndarray, early: np.ndarray, density: np.ndarray, thr: float) -> bool:
    """Whether the last request a full packing took sorts before every request left out.

    Those left out are waiting (never ``early``: protected or in an earlier tier) and no denser
    than ``thr``.
    """
    if not taken.size:
        return True
    last = int(taken[-1])
    return bool(early[last]) or float(density[last]) > thr


_MIN_CANDIDATES = 64  # waiting requests valued exactly on a first try

# Columns of _Snapshot.cols (one row per request, by position in the snapshot).
_ARRIVAL, _TTFT, _G, _NTOK, _NEED, _TOKENS, _BLOCKS, _RUNNING = range(8)
_HAS_REPORT, _REPORT_T, _REPORT_BUF, _REPORT_PAUSED, _REPORT_G = range(8, 13)
_READ_LATE = 13  # how late the reader read its last token, seconds (-inf before the first)
_NCOLS = 14


@dataclass(frozen=True, slots=True)
class _Values:
    """Per-request inputs of the knapsack at one ``now`` (arrays by snapshot position)."""

    arrival: np.ndarray  # arrival, seconds (absolute)
    ttft: np.ndarray  # spec ttft_s
    g: np.ndarray  # 1 / the pace the reader expects: spec tds_tok_s, or the measured pace
    ntok: np.ndarray  # tokens delivered so far
    need: np.ndarray  # when the reader needs the next token, absolute (measured slack if fresh)
    g_r: np.ndarray  # 1 / the reader's pace (measured if fresh)
    tokens: np.ndarray  # prompt + output tokens
    blocks: np.ndarray  # KV blocks for the next step (step_blocks)
    running: np.ndarray  # bool
    read_late: np.ndarray  # lateness of the reader's last read token, seconds (-inf: none yet)
    starve_due: np.ndarray  # due, as the starvation floor counts it (see values)


class _Snapshot:
    """What ``andes`` reads from each RequestView, kept between steps (adapters reuse views).

    A view's row is re-read only when its key changed: identity, state, token counts, KV blocks,
    its slack report (frozen, so compared by identity first) and its tracker's token count (the
    tracker changes only by delivering tokens). Everything that depends on ``now`` is computed from
    the rows with numpy in :meth:`values`.
    """

    def __init__(self) -> None:
        self.keys: list[tuple[object, ...]] = []
        self.ids: list[str] = []
        self.cols = np.empty((_NCOLS, 0))
        self.block_size = 0

    def sync(self, requests: Sequence[RequestView], block_size: int) -> None:
        keys = [
            (r.req_id, r.state, r.output_tokens, r.kv_blocks, r.prompt_tokens, r.slack,
             r.tracker.num_tokens, r.tracker, r.spec, r.arrival_s)
            for r in requests
        ]  # fmt: skip
        n, old = len(keys), self.keys
        if block_size != self.block_size or not old:
            self.cols, changed = np.empty((_NCOLS, n)), list(range(n))
        else:
            changed = []
            if n == len(old):
                changed = np.flatnonzero(np.fromiter(map(ne, keys, old), bool, n)).tolist()
            if n != len(old) or any(keys[i][0] != old[i][0] for i in changed):
                changed = self._realign(keys)  # requests came and went: rows move by req_id
        if changed:
            rows = [_row(requests[i], block_size) for i in changed]
            self.cols[:, np.array(changed, dtype=np.int64)] = np.array(rows).T
        self.keys = keys
        self.ids = [k[0] for k in keys]  # type: ignore[misc]
        self.block_size = block_size

    def _realign(self, keys: list[tuple[object, ...]]) -> list[int]:
        """Move the rows still valid to their new positions; return the positions to re-read."""
        old = self.keys
        at = {k[0]: j for j, k in enumerate(old)}
        dst, src, changed = [], [], []
        for i, k in enumerate(keys):
            j = at.get(k[0], -1)
            if j >= 0 and old[j] == k:
                dst.append(i)
                src.append(j)
            else:
                changed.append(i)
        cols = np.empty((_NCOLS, len(keys)))
        cols[:, np.array(dst, dtype=np.int64)] = self.cols[:, np.array(src, dtype=np.int64)]
        self.cols = cols
        return changed

    def total_blocks(self) -> float:
        return float(self.cols[_BLOCKS].sum())

    def running_ids(self) -> set[str]:
        ids = self.ids
        return {ids[i] for i in np.flatnonzero(self.cols[_RUNNING] > 0.0).tolist()}

    def values(self, now_s: float, config: AndesConfig) -> _Values:
        c = self.cols
        fresh = (c[_HAS_REPORT] > 0.0) & (now_s - c[_REPORT_T] <= config.slack_staleness_s)
        buf = c[_REPORT_BUF]
        measured = np.where(  # as _measured_need
            c[_REPORT_PAUSED] > 0.0,
            np.where(buf < config.resume_cushion_s, now_s + buf, math.inf),
            now_s + (buf - np.maximum(now_s - c[_REPORT_T], 0.0)) + (buf > 0) * 0.5 * c[_REPORT_G],
        )
        g_r = np.where(fresh, c[_REPORT_G], c[_G])
        need = np.where(fresh, measured, c[_NEED])
        # A measured reader with nothing buffered has been stalled since the server's inference
        # says it ran out (it cannot read what was not delivered): the floor counts from then.
        stalled = fresh & (c[_REPORT_PAUSED] == 0.0) & (measured - 0.5 * c[_REPORT_G] <= now_s)
        starve = np.where(stalled, c[_NEED], need)
        return _Values(
            arrival=c[_ARRIVAL], ttft=c[_TTFT], g=np.where(np.isfinite(g_r), g_r, c[_G]),
            ntok=c[_NTOK], need=need, g_r=g_r,
            tokens=c[_TOKENS], blocks=c[_BLOCKS], running=c[_RUNNING] > 0.0,
            read_late=c[_READ_LATE],
            starve_due=np.where(starve == -math.inf, c[_ARRIVAL] + c[_TTFT], starve),
        )  # fmt: skip


def _row(r: RequestView, block_size: int) -> tuple[float, ...]:
    """One request's row of :class:`_Snapshot` (the same arithmetic as the reference)."""
    spec, tr = r.spec, r.tracker
    gi = 1.0 / spec.tds_tok_s
    n = tr.num_tokens
    tokens = r.prompt_tokens + r.output_tokens
    need = tr.arrival_s + tr.last_read_s + gi if n else -math.inf
    blocks = max(r.kv_blocks, -(-tokens // block_size), 1)
    running = 1.0 if r.state is ReqState.RUNNING else 0.0
    late = _read_late(r)
    rep = r.slack
    if rep is None or not rep.delivered:
        no_report = (0.0, 0.0, 0.0, 0.0, gi)
        return (r.arrival_s, spec.ttft_s, gi, n, need, tokens, blocks, running, *no_report, late)
    tds = rep.tds_tok_s
    buf = (rep.delivered - rep.consumed) / tds if tds else math.inf
    g_r = 1.0 / tds if tds else math.inf
    return (r.arrival_s, spec.ttft_s, gi, n, need, tokens, blocks, running,
            1.0, rep.t_s, buf, float(rep.paused), g_r, late)  # fmt: skip


def _informs(rep: SlackRecord | None, now_s: float, staleness_s: float) -> bool:
    """Whether ``rep`` replaces the inference: fresh, and about a reader that has tokens (before
    the first token the reader is where the request's ``ttft`` says, whatever a report says)."""
    return rep is not None and rep.delivered > 0 and now_s - rep.t_s <= staleness_s


def _measured_need(rep: SlackRecord, now_s: float, cushion_s: float) -> float:
    """When a reader with a fresh report needs its next token (absolute; inf: not before the
    horizon). After its slack (the buffered tokens) and, when something is buffered, the rest of
    the token it was reading at the report: half a token's reading time on average (with nothing
    buffered it may already be waiting). A paused reader is taken to come back at once until
    ``cushion_s`` of reading is buffered for it; with that much, it needs nothing while paused."""
    if rep.paused:
        buf = (rep.delivered - rep.consumed) / rep.tds_tok_s if rep.tds_tok_s else math.inf
        return now_s + buf if buf < cushion_s else math.inf
    reading = 0.5 / rep.tds_tok_s if rep.delivered > rep.consumed else 0.0
    return now_s + rep.slack_s(now_s) + reading


def _read_late(r: RequestView) -> float:
    """How late ``r``'s reader read its last token (``c_{n-1} - e_{n-1}``; never decreases)."""
    tr, spec = r.tracker, r.spec
    n = tr.num_tokens
    if not n:
        return -math.inf
    return tr.last_read_s - spec.ttft_s - (n - 1) / spec.tds_tok_s


def _starvation_floor(
    now_s: float, running: np.ndarray, read_late: np.ndarray, due: np.ndarray, limit_s: float
) -> np.ndarray:
    """Requests the starvation floor protects (see the module docstring), as a bool mask.

    A request starves once its reader has been late by more than ``limit_s``: its last read
    token came that late, or it has been due (first token or next read) that long. Running
    starving requests are kept; when none runs, the longest-starving one not running goes first.
    """
    stall = np.maximum(read_late, now_s - due)
    starving = stall > limit_s
    floor = running & starving
    if not floor.any():
        waiting = ~running & starving
        if waiting.any():
            floor[int(np.argmax(np.where(waiting, stall, -math.inf)))] = True
    return floor
