"""``andes`` — the paper's QoE-aware scheduler (Liu et al., arXiv 2404.16283, §4, Algorithm 1).

Each triggered step values every live request by what serving it over the next ``horizon_s`` adds
to its QoE, ``Q_serve - Q_wait`` (the closed form of :func:`engine.qoe.predict_serve_gain`), divides
by its KV footprint, and packs the densest greedily into the KV cache and the batch limit. Running
requests that fall out are preempted. With the paper's cost controls:

* **Batch-size pruning** (§4.3): only a few batch sizes ``B`` are tried (``batch_fractions`` of the
  largest possible); each values the requests at ``L = capacity.token_latency_s(B)`` and the best
  total gain wins.
* **Selective triggering** (§4.3): the knapsack runs only under memory pressure (work that FCFS
  would leave waiting, or would have to preempt) or when the per-token latency of the FCFS batch is
  slower than the strictest reader in it (``L > 1 / max tds``). Otherwise the step is plain FCFS.
* **Overhead-aware refinement** (paper v2, replacing v1's fixed preemption cap): a running request
  is preempted only if what its blocks buy (at the admitted requests' value density) minus its own
  gain exceeds the QoE the whole batch loses while it is recomputed later
  (``capacity.prefill_latency_s`` of its tokens, at the batch's gain per second of service).
* **Anti-thrash**: a request admitted less than ``min_run_steps`` steps ago is not preempted, so a
  request is never parked just after paying its prefill; the horizon gain is monotone in delivery
  time, so no request gains value from having its last tokens delayed.

Measured slack: a :class:`SlackReport` younger than ``slack_staleness_s`` replaces the server's
inference of where the reader is — the reader needs the next token at ``now + slack`` and reads at
the report's pace; a paused reader never needs one, so serving it is worth nothing and it yields.
Older reports are ignored (the tracker's inference is used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.policy.base import (
    Capacity,
    Decision,
    Policy,
    ReqState,
    RequestView,
    build_config,
    register_policy,
)
from engine.policy.fcfs import fcfs_decision
from engine.policy.horizon import serve_gain

__all__ = ["AndesConfig", "AndesPolicy"]


@dataclass(frozen=True, slots=True)
class AndesConfig:
    """Options of the ``andes`` policy."""

    horizon_s: float = 5.0  # look-ahead Δt over which Q_serve and Q_wait are compared
    batch_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # of the largest batch, to try
    slack_staleness_s: float = 1.0  # slack reports older than this are ignored
    min_run_steps: int = 8  # steps after admission during which a request is not preempted
    overhead_aware: bool = True  # refine preemptions by their recompute cost (paper v2)
    latency_trigger: bool = True  # also trigger when the batch is slower than its strictest reader

    def __post_init__(self) -> None:
        for name in ("horizon_s", "slack_staleness_s"):
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
        self._admitted_at: dict[str, int] = {}  # req_id -> step it was (re)admitted
        self.last_triggered = False  # whether the last step ran the knapsack (for benchmarks)

    # -- the step -------------------------------------------------------------------------------

    def schedule(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        step = self._step
        self._step += 1
        base = fcfs_decision(requests, capacity)
        self.last_triggered = self._triggered(now_s, requests, capacity, base)
        decision = self._knapsack(now_s, requests, capacity) if self.last_triggered else base
        self._note_admissions(step, requests, decision)
        return decision

    def _triggered(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity, base: Decision
    ) -> bool:
        if base.preempt or len(base.run) < len(requests):
            return True  # memory pressure: FCFS must preempt or leave work waiting
        if not self.config.latency_trigger or not base.run:
            return False
        max_tds = 0.0
        for r in requests:
            tds = r.spec.tds_tok_s
            rep = r.slack
            if rep is not None and now_s - rep.t_s <= self.config.slack_staleness_s:
                tds = 0.0 if rep.paused else rep.tds_tok_s
            max_tds = max(max_tds, tds)
        return max_tds > 0.0 and capacity.token_latency_s(len(base.run)) > 1.0 / max_tds

    def _note_admissions(self, step: int, requests: Sequence[RequestView], d: Decision) -> None:
        running = {r.req_id for r in requests if r.state is ReqState.RUNNING}
        for req_id in d.run:
            if req_id not in running:
                self._admitted_at[req_id] = step
        if step % 64 == 0:  # forget finished requests now and then
            live = {r.req_id for r in requests}
            self._admitted_at = {k: v for k, v in self._admitted_at.items() if k in live}

    # -- Algorithm 1 ----------------------------------------------------------------------------

    def _knapsack(
        self, now_s: float, requests: Sequence[RequestView], capacity: Capacity
    ) -> Decision:
        cfg = self.config
        n_req = len(requests)
        bs = capacity.block_size
        stale = cfg.slack_staleness_s
        protect_after = self._step - 1 - cfg.min_run_steps
        admitted_at = self._admitted_at
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
            if rep is not None and now_s - rep.t_s <= stale:
                need = inf if rep.paused else now_s + rep.slack_s(now_s)
                g_r = 1.0 / rep.tds_tok_s
            else:
                need = tr.arrival_s + tr.last_read_s + gi if n else -inf
                g_r = gi
            if r.state is running_state:
                run, prot, pre = (
                    1.0,
                    float(admitted_at.get(r.req_id, -(10**9)) > protect_after),
                    0.0,
                )
            else:
                run, prot, pre = 0.0, 0.0, prefill_of(tokens)
            blocks = max(r.kv_blocks, -(-tokens // bs), 1)
            append((r.arrival_s, spec.ttft_s, gi, n, need, g_r, pre, blocks, run, prot))
        cols = np.array(rows).T
        arrival, ttft, g, ntok, need, g_r, prefill, blocks = cols[:8]
        running, protected = cols[8] > 0.0, cols[9] > 0.0

        rel_now = now_s - arrival
        h = rel_now + cfg.horizon_s
        need_rel = need - arrival
        b_max = min(capacity.max_batch, n_req)
        best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
        for b in sorted({max(1, round(f * b_max)) for f in cfg.batch_fractions}):
            lat = capacity.token_latency_s(b)
            gain = serve_gain(h, ttft, g, ntok, rel_now + prefill + lat, need_rel, g_r, lat)
            # Protected requests first, then by value per KV block; ties: running, then oldest.
            order = np.lexsort((arrival, ~running, -(gain / blocks), ~protected))
            chosen = _pack(order, blocks, capacity.kv_blocks, b)
            total = float(gain[chosen].sum())
            if best is None or total > best[0]:
                best = (total, gain, order, chosen)
        assert best is not None
        _, gain, order, chosen = best
        selected = np.zeros(n_req, dtype=bool)
        selected[chosen] = True

        keep_victim = np.zeros(n_req, dtype=bool)
        victims = np.flatnonzero(running & ~selected)
        if cfg.overhead_aware and victims.size:
            admits = selected & ~running
            admit_blocks = blocks[admits].sum()
            density_admitted = gain[admits].sum() / admit_blocks if admit_blocks else 0.0
            loss_per_s = gain[selected].sum() / cfg.horizon_s  # the batch's gain per second served
            recompute = np.array(
                [prefill_of(requests[i].prompt_tokens + requests[i].output_tokens) for i in victims]
            )
            benefit = density_admitted * blocks[victims] - gain[victims]
            keep_victim[victims] = benefit <= loss_per_s * recompute

        # Final order: what the knapsack chose (running first), victims worth keeping, then the
        # admissions, then the rest; packing again trims what no longer fits.
        pos = np.empty(n_req, dtype=np.int64)
        pos[order] = np.arange(n_req)
        tier = np.where(selected & running, 0, np.where(keep_victim, 1, np.where(selected, 2, 3)))
        final = np.lexsort((pos, tier))
        run = _pack(final, blocks, capacity.kv_blocks, capacity.max_batch)
        in_run = np.zeros(n_req, dtype=bool)
        in_run[run] = True
        out = final[running[final] & ~in_run[final]][::-1]  # lowest priority goes first
        return Decision(
            run=[requests[i].req_id for i in run], preempt=[requests[i].req_id for i in out]
        )


def _pack(order: np.ndarray, blocks: np.ndarray, kv_blocks: int, max_batch: int) -> np.ndarray:
    """Indices taken greedily in ``order`` while they fit (skipping those that do not).

    The same result as :func:`engine.policy.packing.greedy_pack`, with the leading run that fits
    found by a cumulative sum and only the tail after the first misfit walked in Python.
    """
    sizes = blocks[order]
    k = min(int(np.searchsorted(np.cumsum(sizes), kv_blocks, side="right")), max_batch)
    if k == len(order) or k == max_batch:
        return order[:k]
    free = kv_blocks - float(sizes[:k].sum())
    slots = max_batch - k
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
    return np.concatenate([order[:k], order[np.array(extra, dtype=np.int64)]])
