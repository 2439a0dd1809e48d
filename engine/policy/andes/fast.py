"""The fast path: :func:`engine.policy.andes.algorithm.decide`'s decision, in well under a
millisecond for hundreds of running and thousands of waiting requests.

Three things make it fast, none of which changes a decision:

* **Columns kept between steps.** Every request's :class:`~engine.policy.andes.guards.Row` lives
  in numpy columns (the rows of one matrix, so a request leaving or coming is one operation,
  not one per field). Given a :class:`~engine.policy.snapshot.Snapshot`, only the rows the
  adapter touched are re-read, and a step's deliveries (one token each, the common case) are
  applied to the columns in one vectorised pass with the tracker's own arithmetic. Any other
  sequence of views is re-read whole.
* **Arrays instead of loops** for the readers, the guards, the values and the packing.
* **Fewer values.** Every on-device request is valued exactly; of the waiting ones only the
  ``K`` with the highest *upper bound* on value density (their gain with no first-token delay at
  the fastest candidate latency: the gain never grows with a later first token or a slower
  batch). The result is exact when every packing stopped full (no slot or no KV block left) at
  a request denser than the best bound left out: those left out sort after that point in the
  full order, so no packing could have reached them. Otherwise ``K`` doubles, up to every
  waiting request.

The refiner runs the definition's own code (:func:`~engine.policy.andes.algorithm.refine`) on
the few requests it concerns.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from engine.policy.andes.algorithm import (
    NO_WAITING,
    Frame,
    Outcome,
    batch_sizes,
    growth,
    lookahead_steps,
    refine,
)
from engine.policy.andes.config import AndesConfig
from engine.policy.andes.guards import Row, readers_at, row_of, starving_at
from engine.policy.andes.memory import Memory, StepState
from engine.policy.base import Capacity, RequestView
from engine.policy.horizon import serve_gain
from engine.policy.snapshot import Snapshot

__all__ = ["Columns", "decide_fast"]

_FIELDS = [f.name for f in fields(Row) if f.name != "req_id"]
_VALUES = operator.attrgetter(*_FIELDS)  # a row's fields, in _FIELDS order


def _matrix(rows: Sequence[Row]) -> np.ndarray:
    """``rows`` as a (field, request) matrix."""
    if not rows:
        return np.empty((len(_FIELDS), 0))
    return np.ascontiguousarray(np.array([_VALUES(r) for r in rows], dtype=float).T)
_MIN_CANDIDATES = 64  # waiting requests valued exactly on a first try


class Columns:
    """The rows of every live request as numpy columns, in the snapshot's order."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.pos: dict[str, int] = {}
        self.m = _matrix([])  # one row per field, one column per request
        self.c: dict[str, np.ndarray] = {}  # the fields by name: views of ``m``'s rows
        self._name_columns()
        self._source: Snapshot | None = None
        self._block_size = 0

    def __len__(self) -> int:
        return len(self.ids)

    def sync(
        self, requests: Sequence[RequestView], block_size: int
    ) -> tuple[list[str], list[str]]:
        """Bring the columns up to date with ``requests``; returns (the ids that left, the ids
        seen waiting or parked before that are on the device now: admitted since)."""
        if (
            isinstance(requests, Snapshot)
            and requests is self._source
            and block_size == self._block_size
        ):
            changes = requests.take_changes()
            if not changes.overflowed:
                return self._apply(requests, changes, block_size)
        was_off = {r for r, s in zip(self.ids, self.c["state"].tolist(), strict=True) if s < 2}
        live = {v.req_id for v in requests}
        gone = [r for r in self.ids if r not in live]
        if isinstance(requests, Snapshot):
            requests.take_changes()
            self._source = requests
        else:
            self._source = None
        rows = [row_of(v, block_size) for v in requests]
        self._rebuild(rows)
        self._block_size = block_size
        return gone, [r.req_id for r in rows if r.on_device and r.req_id in was_off]

    def _rebuild(self, rows: list[Row]) -> None:
        self.ids = [r.req_id for r in rows]
        self.pos = {r: i for i, r in enumerate(self.ids)}
        self.m = _matrix(rows)
        self._name_columns()

    def _name_columns(self) -> None:
        self.c = {name: self.m[k] for k, name in enumerate(_FIELDS)}

    def _apply(self, snap: Snapshot, changes, block_size: int) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
        pos = self.pos
        removed = [r for r in changes.removed if r in pos]
        if removed:
            self._remove(removed)
        added = [r for r in changes.added if r not in changes.removed and r in snap]
        if added:
            self._add(snap, added, block_size)
        fresh = set(added)
        touched = {r for r in changes.touched if r in pos and r not in fresh}
        once: dict[str, tuple[float, int]] = {}
        for req_id, now_s, count in changes.delivered:
            if req_id in touched or req_id in fresh or req_id not in pos:
                continue
            if req_id in once or count != 1:
                touched.add(req_id)
                once.pop(req_id, None)
            else:
                once[req_id] = (now_s, count)
        if once:
            self._deliver_one(once, block_size)
        came_on = []
        state = self.c["state"]
        where, rows = [], []
        for req_id in touched:
            view = snap.get(req_id)
            if view is None:
                continue
            row = row_of(view, block_size)
            i = pos[req_id]
            if row.on_device and state[i] < 2:
                came_on.append(req_id)
            where.append(i)
            rows.append(row)
        if rows:
            self.m[:, where] = _matrix(rows)
        return removed, came_on

    def _remove(self, removed: list[str]) -> None:
        pos, ids = self.pos, self.ids
        at = sorted(pos[r] for r in removed)
        keep = np.ones(len(ids), dtype=bool)
        keep[at] = False
        self.m = self.m[:, keep]
        for i in reversed(at):
            del ids[i]
        for r in removed:
            del pos[r]
        first = at[0]  # those after the first removed moved up
        pos.update(zip(ids[first:], range(first, len(ids)), strict=True))
        self._name_columns()

    def _add(self, snap: Snapshot, added: list[str], block_size: int) -> None:
        start = len(self.ids)
        self.ids.extend(added)
        self.pos.update(zip(added, range(start, start + len(added)), strict=True))
        rows = [row_of(snap.get(r), block_size) for r in added]  # type: ignore[arg-type]
        self.m = np.concatenate([self.m, _matrix(rows)], axis=1)
        self._name_columns()

    def _deliver_one(self, once: dict[str, tuple[float, int]], block_size: int) -> None:
        """One token delivered to each of ``once`` (id -> (at, 1)): the tracker's recurrence
        (``core.qoe.QoETracker.add``) on the columns."""
        idx = np.fromiter((self.pos[r] for r in once), dtype=np.int64, count=len(once))
        at = np.fromiter((t for t, _ in once.values()), dtype=float, count=len(once))
        c = self.c
        d = at - c["arrival"][idx]
        last = c["last_read"][idx]
        c["last_read"][idx] = np.maximum(d, last + c["g"][idx])
        c["ntok"][idx] += 1.0
        c["pending"][idx] = 0.0  # a token came out: its prefill is done
        tokens = c["tokens"][idx] + 1.0
        c["tokens"][idx] = tokens
        c["blocks"][idx] = np.maximum(c["blocks"][idx], np.maximum(np.ceil(tokens / block_size), 1))


def decide_fast(
    now_s: float, cols: Columns, memory: Memory, capacity: Capacity, config: AndesConfig
) -> Outcome:
    """:func:`~engine.policy.andes.algorithm.decide` over ``cols``, faster (module docstring)."""
    cfg, cap = config, capacity
    c = cols.c
    n = len(cols)
    if not n:
        return Outcome(None)
    need, g_read, g_expect, due, stall_from = readers_at(
        c, now_s, cfg.slack_staleness_s, cfg.resume_cushion_s
    )
    blocks = c["blocks"]
    on = c["state"] >= 2

    # 1. What binds.
    binds = []
    if blocks.sum() > cap.kv_blocks:
        binds.append("kv")
    if n > cap.max_batch:
        binds.append("slots")
    if cfg.latency_trigger:
        needing = g_read[need < math.inf]
        if needing.size and cap.token_latency_s(min(n, cap.max_batch)) > float(needing.min()):
            binds.append("latency")
    if not binds:
        memory.remember(now_s, None, None)
        return Outcome(None)
    waiting_blocks = blocks[~on]
    grow = growth(c["tokens"].astype(np.int64), lookahead_steps(cap, cfg, int(on.sum())),
                  cap.block_size, cfg)  # fmt: skip
    state = StepState(
        binds=tuple(binds), free=cap.kv_blocks - int(blocks[on].sum()),
        reserve=int(grow[on & (c["pending"] == 0)].sum()),
        smallest_wait=int(waiting_blocks.min()) if waiting_blocks.size else NO_WAITING,
        on_device=int(on.sum()), max_batch=cap.max_batch,
    )  # fmt: skip
    reused = memory.reuse(now_s, state, cols.pos.__contains__)
    if reused is not None:
        return Outcome(reused, tuple(binds), min(cap.max_batch, n), 0.0, reused=True)

    starve = starving_at(c, stall_from, now_s, cfg.starvation_s)
    protected = starve > -math.inf
    pos = cols.pos
    recent = [pos[r] for r in memory.recent(now_s) if r in pos]
    if recent:
        idx = np.array(recent, dtype=np.int64)
        protected[idx] |= on[idx]

    sizes = batch_sizes(n, cap, cfg, binds)
    lats = [cap.token_latency_s(b) for b in sizes]
    per_block = "kv" in binds
    rel = now_s - c["arrival"]
    h = rel + cfg.horizon_s
    need_rel = need - c["arrival"]
    waiting = np.flatnonzero(~on)
    always = on | protected  # valued exactly whatever their bound

    # Upper bounds on the waiting requests' density: no first-token delay, fastest latency.
    k = waiting.size
    bound = np.empty(0)
    if waiting.size > _MIN_CANDIDATES:
        w, lat = waiting, min(lats)
        ub = serve_gain(h[w], c["ttft"][w], g_expect[w], c["ntok"][w], rel[w] + lat,
                        need_rel[w], g_read[w], lat)  # fmt: skip
        bound = ub / (blocks[w] if per_block else 1.0)
        k = _MIN_CANDIDATES
    while True:
        if k >= waiting.size:
            sub, thr = np.arange(n), -math.inf
        else:
            part = np.argpartition(-bound, k)
            pick = always.copy()
            pick[waiting[part[:k]]] = True
            sub = np.flatnonzero(pick)  # ascending, as the full set is
            thr = float(bound[part[k]])
            thr += abs(thr) * 1e-9 + 1e-12  # strictly above, with room for rounding
        found = _knapsack(sub, thr, cols, cap, sizes, lats, per_block, protected, starve, due,
                          h, rel, need_rel, g_expect, g_read)  # fmt: skip
        if found is not None:
            break
        k *= 2
    b, lat, gain_sub, order_sub, chosen_sub, first_delay_sub = found

    # The refiner on the positions of the full snapshot (its inputs restricted to ``sub``).
    gain = np.zeros(n)
    gain[sub] = gain_sub
    first_delay = np.zeros(n)
    first_delay[sub] = first_delay_sub
    fill_pool = waiting[blocks[waiting] <= cap.kv_blocks]
    fill = fill_pool[np.lexsort((fill_pool, due[fill_pool]))].tolist()
    frame = Frame(
        ids=cols.ids, on=on, blocks=blocks.astype(np.int64), tokens=c["tokens"].astype(np.int64),
        pending=c["pending"].astype(np.int64), arrival=c["arrival"], due=due,
        first_delay=first_delay, protected=protected, starve=starve, grow=grow,
    )  # fmt: skip
    order = sub[order_sub].tolist()
    chosen = set(sub[chosen_sub].tolist())
    out = refine(now_s, frame, gain, order, chosen, fill, b, lat, memory, cap, cfg, tuple(binds))
    memory.remember(now_s, state, out.decision)
    return out


def _knapsack(sub, thr, cols, cap, sizes, lats, per_block, protected, starve, due, h, rel,  # type: ignore[no-untyped-def]
              need_rel, g_expect, g_read):  # fmt: skip
    """The knapsack over ``sub``; None when a packing might have reached a request left out."""
    c = cols.c
    on = c["state"][sub] >= 2
    blocks = c["blocks"][sub]
    pending, tokens, cached = c["pending"][sub], c["tokens"][sub], c["cached"][sub]
    first_delay = np.zeros(sub.size)
    pre = np.flatnonzero(on & (pending > 0))
    if pre.size:
        first_delay[pre] = cap.prefill_latency_s(pending[pre].astype(np.int64))
    off = np.flatnonzero(~on)
    if off.size:
        first_delay[off] = cap.resume_delay_s(tokens[off].astype(np.int64),
                                              cached[off].astype(np.int64))  # fmt: skip
    prot, stv = protected[sub], starve[sub]
    lat_col = np.array(lats)[:, None]
    gains = serve_gain(
        h[sub], c["ttft"][sub], g_expect[sub], c["ntok"][sub],
        (rel[sub] + first_delay)[None, :] + lat_col, need_rel[sub], g_read[sub], lat_col,
    )  # fmt: skip
    weight = blocks if per_block else 1.0
    starve_key = np.where(prot, -stv, 0.0)
    best = None
    for b, lat, gain in zip(sizes, lats, gains, strict=True):
        density = gain / weight
        order = np.lexsort((sub, c["arrival"][sub], due[sub], ~on, -density, starve_key, ~prot))
        chosen, full = _pack_full(order, blocks, cap.kv_blocks, b)
        if thr > -math.inf and not (full and _beyond(chosen, prot, density, thr)):
            return None
        total = float(gain[chosen].sum())
        if best is None or total >= best[0]:  # ties: the larger batch (throughput)
            best = (total, b, lat, gain, order, chosen)
    assert best is not None
    _, b, lat, gain, order, chosen = best
    return b, lat, gain, order, chosen, first_delay


def _pack_full(
    order: np.ndarray, blocks: np.ndarray, kv_blocks: int, max_batch: int
) -> tuple[np.ndarray, bool]:
    """Indices taken greedily in ``order`` while they fit (skipping those that do not), and
    whether the packing ended full (no slot or no KV block left).

    The leading run that fits is found by a cumulative sum; only the tail after the first misfit
    is walked in Python. A packing that ended full never looked past its last pick.
    """
    sizes = blocks[order]
    k = min(int(np.searchsorted(np.cumsum(sizes), kv_blocks, side="right")), max_batch)
    free = kv_blocks - float(sizes[:k].sum())
    slots = max_batch - k
    if k == len(order) or k == max_batch:
        return order[:k], slots == 0 or free <= 0
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
    """Whether the last request a full packing took sorts before every request left out (those
    left out are waiting, unprotected, and no denser than ``thr``)."""
    if not taken.size:
        return True
    last = int(taken[-1])
    return bool(early[last]) or float(density[last]) > thr
