"""Algorithm 1 of the paper and its refiner, straightforwardly: the definition of a decision.

Liu et al., *Andes* (arXiv 2404.16283), §4. Read top to bottom, one step is:

1. **What binds.** The batch limit (more live requests than ``max_batch``), the KV cache (the
   next step of everyone on the device plus every waiting request's KV exceeds it), or the
   latency trigger (§4.3: a full batch is slower than its strictest reader). When none does,
   there is no decision to make: ``None``, the engine's own order (and no CPU spent).
2. **Value.** Each request's ``Q_serve − Q_wait`` over the horizon ``Δt`` (§4.2; the closed
   form of :func:`core.qoe.predict_serve_gain`, :func:`engine.policy.horizon.serve_gain`),
   served at the per-token latency ``L`` of the batch and after its first-token delay (its
   prefill, the rest of its prompt, or what a park makes it recompute or load).
3. **Knapsack** (§4.2–4.3). For a few batch sizes (``batch_fractions``, §4.3's pruning), order by
   value per unit of what binds (per KV block when the cache binds, per batch slot otherwise),
   protected requests first (:mod:`engine.policy.andes.guards`), and pack greedily into the KV
   cache and the batch; the size with the most total value wins.
4. **Refiner** (the paper's v2, which replaces v1's preemption cap): the cheapest lever first.
   On-device requests the knapsack left out are *held* (they keep their KV: free) and only
   *parked* (KV freed) when an admission that is **due** (admitted one step later it would be
   late) needs their memory and gains more than the park loses: the victim's own value plus the
   QoE the whole batch loses while its context is recomputed on resume
   (:meth:`~engine.policy.base.Capacity.park_cost_s`, at the batch's value per second). Parks
   also draw on a budget, ``park_share``, the share of engine time recomputation may take (by
   default what the throughput floor lets go, ``1 − min_throughput_share``), so
   the throughput a park can cost is bounded whatever the values say; parks that cost nothing
   (host offload) draw nothing.
5. **Work conservation.** A batch slot the plan leaves free is filled — by a held request (it
   costs nothing) or by a waiting one that fits — so choosing never shrinks the batch unless the
   latency trigger asked for a smaller one. Admissions leave headroom for the running set's
   growth until the policy next decides in full (:func:`growth`: the requests whose next token
   opens a block within that many steps) — beyond it, growth is step 6's to handle, by value;
   without it the engine would meet the growth first and preempt by its own rule (vLLM's victim
   is the newest: the admission, whose prefill would be paid twice). Headroom for more than that
   — a block per running request, the next ``block_size`` steps — would count growth that
   finishing requests pay for many times over, and keep requests waiting while memory is free.
6. **Memory pressure.** When the running set's own growth overflows the cache, the victims are
   the lowest in the order — the most slack, the least value per block — not the newest.

:mod:`engine.policy.andes.fast` decides the same, faster; ``tests/engine/policy`` checks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.policy.andes.config import AndesConfig
from engine.policy.andes.guards import Row, reader_at, starving
from engine.policy.andes.memory import Memory, StepState
from engine.policy.base import Capacity, Decision
from engine.policy.horizon import serve_gain

__all__ = ["Frame", "Outcome", "batch_sizes", "decide", "growth", "lookahead_steps", "refine"]

WAITING, PREEMPTED, RUNNING, HELD = range(4)
NO_WAITING = 1 << 62  # the smallest waiting request's blocks when nothing waits


@dataclass(slots=True)
class Outcome:
    """A decision and why: what bound, and the batch size the knapsack chose."""

    decision: Decision | None
    binds: tuple[str, ...] = ()  # of "kv", "slots", "latency"
    batch: int = 0
    parked_s: float = 0.0  # engine seconds the decision's parks will cost
    reused: bool = False  # the last full decision, reused (memory.py, "Cadence")
    # "relieved": parks for the running set's own growth (step 6), the rest were for admissions
    notes: dict[str, float] = field(default_factory=dict)


def batch_sizes(
    n_live: int, capacity: Capacity, config: AndesConfig, binds: Sequence[str]
) -> list[int]:
    """The batch sizes the knapsack tries: the largest possible, and, when the batch is too slow
    for its readers (the latency trigger), a few fractions of it (§4.3's pruning) — those that
    keep ``min_throughput_share`` of the largest batch's token rate by the latency model.

    Why the floor: a smaller batch makes its tokens come sooner, and the horizon's valuation sees
    that; the tokens it does not produce now must still be produced, later, by an engine that is
    still loaded — the valuation does not see those (a held stream's reader loses nothing within
    the horizon). Where the step latency hardly grows with the batch (a GPU below saturation) no
    smaller batch passes, and none would make tokens come sooner either; where it grows nearly in
    proportion (compute-bound), holding costs little throughput and the knapsack may use it."""
    b_max = min(capacity.max_batch, n_live)
    if "latency" not in binds:
        return [b_max]
    lat = capacity.token_latency_s
    floor = config.min_throughput_share * b_max / lat(b_max)
    sizes = {max(1, round(f * b_max)) for f in config.batch_fractions}
    return sorted({b for b in sizes if b / lat(b) >= floor} | {b_max})


@dataclass(slots=True)
class Frame:
    """The per-request inputs of one step, as arrays by position (the definition builds them
    with a loop over the rows, the fast path keeps them as columns)."""

    ids: list[str]
    on: np.ndarray  # bool: KV on the device (running or held)
    blocks: np.ndarray  # KV blocks for its next step
    tokens: np.ndarray  # context tokens (prompt + output)
    pending: np.ndarray  # on device: prefill tokens left beyond one step's
    arrival: np.ndarray
    due: np.ndarray  # when waiting starts to cost it QoE (absolute)
    first_delay: np.ndarray  # seconds before its next token once it takes a step, beyond the step
    protected: np.ndarray  # bool: the guards' protection
    starve: np.ndarray  # how long it has starved (-inf: not starving)
    grow: np.ndarray  # blocks it opens before the next full decision once decoding (growth())


def decide(
    now_s: float, rows: Sequence[Row], memory: Memory, capacity: Capacity, config: AndesConfig
) -> Outcome:
    """One step of Algorithm 1 and the refiner over ``rows`` (see the module docstring)."""
    cfg, cap = config, capacity
    n = len(rows)
    readers = [reader_at(r, now_s, cfg.slack_staleness_s, cfg.resume_cushion_s) for r in rows]

    # 1. What binds.
    binds = []
    if sum(r.blocks for r in rows) > cap.kv_blocks:
        binds.append("kv")
    if n > cap.max_batch:
        binds.append("slots")
    if cfg.latency_trigger and _too_slow([rd.g_read for rd in readers if rd.need < math.inf],
                                         cap, min(n, cap.max_batch)):  # fmt: skip
        binds.append("latency")
    if not binds:
        memory.remember(now_s, None, None)
        return Outcome(None)
    on_rows = [r for r in rows if r.on_device]
    grow = growth(np.array([r.tokens for r in rows], dtype=np.int64),
                  lookahead_steps(cap, cfg, len(on_rows)), cap.block_size, cfg)  # fmt: skip
    state = StepState(
        binds=tuple(binds), free=cap.kv_blocks - sum(r.blocks for r in on_rows),
        reserve=sum(int(grow[i]) for i, r in enumerate(rows) if r.on_device and r.pending == 0),
        smallest_wait=min((r.blocks for r in rows if not r.on_device), default=NO_WAITING),
        on_device=len(on_rows), max_batch=cap.max_batch,
    )  # fmt: skip
    live = {r.req_id for r in rows}
    reused = memory.reuse(now_s, state, live.__contains__)
    if reused is not None:
        return Outcome(reused, tuple(binds), min(cap.max_batch, n), 0.0, reused=True)

    # Guards (guards.py): the starving (the longest-starving first) and the just admitted.
    starve = [starving(r, rd, now_s, cfg.starvation_s) for r, rd in zip(rows, readers, strict=True)]
    recent = set(memory.recent(now_s))
    protected = [
        starve[i] > -math.inf or (r.on_device and r.req_id in recent) for i, r in enumerate(rows)
    ]
    frame = Frame(
        ids=[r.req_id for r in rows],
        on=np.array([r.on_device for r in rows], dtype=bool),
        blocks=np.array([r.blocks for r in rows], dtype=np.int64),
        tokens=np.array([r.tokens for r in rows], dtype=np.int64),
        pending=np.array([r.pending for r in rows], dtype=np.int64),
        arrival=np.array([r.arrival for r in rows]),
        due=np.array([rd.due for rd in readers]),
        first_delay=np.array([_first_delay(r, cap) for r in rows]),
        protected=np.array(protected, dtype=bool),
        starve=np.array(starve),
        grow=grow,
    )

    # 2–3. Value at each candidate batch size, and the knapsack.
    per_block = "kv" in binds
    best: tuple[float, int, float, np.ndarray, list[int], set[int]] | None = None
    for b in batch_sizes(n, cap, cfg, binds):
        lat = cap.token_latency_s(b)
        gain = _gains(now_s, rows, readers, frame.first_delay, lat, cfg.horizon_s)
        density = [gain[i] / (rows[i].blocks if per_block else 1.0) for i in range(n)]

        def key(i: int, density: list[float] = density) -> tuple:
            return (not protected[i], -starve[i] if protected[i] else 0.0, -density[i],
                    not rows[i].on_device, readers[i].due, rows[i].arrival, i)

        order = sorted(range(n), key=key)
        chosen = _pack(order, rows, cap.kv_blocks, b)
        total = sum(float(gain[i]) for i in chosen)
        if best is None or total >= best[0]:  # ties: the larger batch (throughput)
            best = (total, b, lat, gain, order, chosen)
    assert best is not None
    _, b, lat, gain, order, chosen = best
    fill = sorted((i for i in range(n) if not rows[i].on_device), key=lambda i: (frame.due[i], i))
    out = refine(now_s, frame, gain, order, chosen, fill, b, lat, memory, cap, cfg, tuple(binds))
    memory.remember(now_s, state, out.decision)
    return out


def refine(
    now_s: float,
    f: Frame,
    gain: np.ndarray,
    order: Sequence[int],
    chosen: set[int],
    fill: Sequence[int],
    batch: int,
    lat: float,
    memory: Memory,
    cap: Capacity,
    cfg: AndesConfig,
    binds: tuple[str, ...],
) -> Outcome:
    """Steps 4–6 of the module docstring: the knapsack's choice turned into levers.

    ``order`` is the knapsack's priority order (it must hold every on-device and every chosen
    request; others may be left out); ``fill`` the waiting requests in the order free slots are
    filled with: earliest due first (FCFS for first tokens), whatever their value — a slot
    that would otherwise idle costs nothing to fill, and the knapsack already had its say.
    """
    room = _Room(f, gain, chosen, memory.park_credit(now_s, cfg), cap, cfg)
    run_on, left = [], []  # on-device, in priority order: chosen, and left out
    for i in order:
        if room.on[i]:
            (run_on if i in chosen else left).append(i)
    if room.free < 0:  # 6. memory pressure first: the running set's growth must fit
        room.relieve([*left, *run_on])
    relieved = len(room.parked)
    # 4. Admissions in the knapsack's order; a due one may pay for parks.
    admitted, blocked = room.admit(now_s, [j for j in order if j in chosen and not room.on[j]],
                                   left, lat, memory, cfg)  # fmt: skip
    # 5. Work conservation: fill the batch's free slots, held requests first, then waiting ones.
    run_on = [i for i in run_on if i not in room.parked_set]
    slots = batch - len(run_on) - len(admitted)
    refill = [i for i in left if i not in room.parked_set][: max(slots, 0)]
    if not blocked:
        admitted += room.fill(fill, slots - len(refill), set(admitted))
    # The order vLLM serves its running list in, and spends the step's token budget in: the
    # decoding streams first (one token each), then those still prefilling (what is left).
    on_device = [*run_on, *refill]
    pending = room.pending
    ordered = [i for i in on_device if pending[i] == 0] + [i for i in on_device if pending[i]]
    ids = f.ids
    decision = Decision(run=[ids[i] for i in [*ordered, *admitted]],
                        preempt=[ids[i] for i in room.parked])  # fmt: skip
    memory.spend(room.spent)
    return Outcome(decision, binds, batch, room.spent, notes={"relieved": relieved})


class _Room:
    """The KV cache and the park budget as the refiner spends them, one request at a time."""

    def __init__(self, f: Frame, gain: np.ndarray, chosen: set[int], credit: float,
                 cap: Capacity, cfg: AndesConfig) -> None:  # fmt: skip
        self.f, self.cap = f, cap
        # Plain lists: the loops index them one request at a time.
        self.on, self.blocks, self.tokens = f.on.tolist(), f.blocks.tolist(), f.tokens.tolist()
        self.pending, self.gains = f.pending.tolist(), gain.tolist()
        self.free = cap.kv_blocks - int(f.blocks[f.on].sum())
        self.grow = f.grow.tolist()  # headroom per request once it decodes (growth())
        self.reserve = int(f.grow[f.on & (f.pending == 0)].sum())
        self.loss_per_s = sum(self.gains[i] for i in chosen) / cfg.horizon_s  # batch value / s
        self.credit = credit
        self.priced = cfg.overhead_aware
        self.spent = 0.0
        self.parked: list[int] = []
        self.parked_set: set[int] = set()

    def grows(self, v: int) -> int:
        """The headroom a running request reserves (0 once parked)."""
        return self.grow[v] if self.on[v] and self.pending[v] == 0 else 0

    def price(self, v: int) -> float:
        """What parking ``v`` loses: its value, plus its recompute at the batch's value per s."""
        return self.gains[v] + self.cap.park_cost_s(self.tokens[v]) * self.loss_per_s

    def park(self, v: int) -> None:
        self.free += self.blocks[v]
        self.reserve -= self.grows(v)
        self.parked.append(v)
        self.parked_set.add(v)
        self.spent += self.cap.park_cost_s(self.tokens[v])

    def relieve(self, candidates: list[int]) -> None:
        """Park until the running set's growth fits. The victims lose least (vLLM's own victim,
        the newest, is only the cheapest to recompute); protected ones go last."""
        protected = self.f.protected
        for v in sorted(candidates, key=lambda i: (bool(protected[i]), self.price(i), i)):
            if self.free >= 0:
                break
            self.park(v)

    def admit(self, now_s: float, wanted: list[int], left: list[int], lat: float,
              memory: Memory, cfg: AndesConfig) -> tuple[list[int], bool]:  # fmt: skip
        """Admit ``wanted`` in order while they fit; a due one may pay for parks from ``left``.
        Returns the admitted, and whether a starving request is left waiting for room (nobody
        else may take it then, as FCFS's head of line)."""
        f, admitted = self.f, []
        pool: list[int] | None = None
        for j in wanted:
            need = self.blocks[j] + self.reserve
            if need > self.free:
                if now_s + f.first_delay[j] + 2.0 * lat < f.due[j]:
                    continue  # not due: waiting costs it nothing yet, so no park for it
                if pool is None:  # the park candidates, cheapest first (priced once)
                    pool = _park_pool(left, f, self.gains, self.tokens, self.cap,
                                      self.loss_per_s, self.priced)  # fmt: skip
                starving = f.starve[j] > -math.inf
                found = _victims(pool, self.parked_set, self.blocks, need - self.free, self.grows)
                if found is None or not self._worth(j, found, starving, memory, cfg):
                    if starving:
                        return admitted, True
                    continue
                for v in found:
                    self.park(v)
            admitted.append(j)
            self.free -= self.blocks[j]
            self.reserve += self.grow[j]
        return admitted, False

    def _worth(self, j: int, found: list[int], starving: bool, memory: Memory,
               cfg: AndesConfig) -> bool:  # fmt: skip
        """Whether admitting ``j`` pays for parking ``found`` (the v2 refiner's test). A starving
        request skips the value test (by value it would wait until arrivals stop: the tail the
        floor exists to bound) and may overdraw the budget once."""
        cost = sum(self.cap.park_cost_s(self.tokens[v]) for v in found)
        if starving:
            return self.spent + cost <= self.credit + memory.burst_s(cfg)
        if not self.priced:
            return True
        loss = sum(self.price(v) for v in found)
        return self.gains[j] > loss and self.spent + cost <= self.credit

    def fill(self, fill: Sequence[int], slots: int, taken: set[int]) -> list[int]:
        """Waiting requests in ``fill`` order into ``slots`` free slots, as the cache allows."""
        out = []
        for j in fill:
            if slots <= 0:
                break
            if j in taken or self.blocks[j] + self.reserve > self.free:
                continue
            out.append(j)
            self.free -= self.blocks[j]
            self.reserve += self.grow[j]
            slots -= 1
        return out


def lookahead_steps(cap: Capacity, cfg: AndesConfig, on_device: int) -> int:
    """Engine steps until the policy next decides in full: its cadence (``decide_every_s``) at
    the batch's step latency, at least the next step, at most ``block_size`` (by then every
    decoding request has opened a block)."""
    step_s = cap.token_latency_s(max(on_device, 1))
    steps = math.ceil(cfg.decide_every_s / step_s) if step_s > 0 else 1
    return max(1, min(steps, cap.block_size))


def growth(tokens: np.ndarray, steps: int, block_size: int, cfg: AndesConfig) -> np.ndarray:
    """The KV blocks each request opens within its next ``steps`` decode steps (0 or 1): a request
    of ``t`` context tokens holds ``ceil(t / block_size)`` blocks and opens one more when its
    context passes the last, in ``(-t) mod block_size + 1`` steps. All zero without
    ``admission_headroom``."""
    if not cfg.admission_headroom:
        return np.zeros(tokens.shape, dtype=np.int64)
    return ((-tokens) % block_size < steps).astype(np.int64)


def _first_delay(row: Row, cap: Capacity) -> float:
    """Seconds before ``row`` can emit its next token once it takes a step (beyond the step)."""
    if row.on_device:
        return cap.prefill_latency_s(row.pending) if row.pending else 0.0
    return cap.resume_delay_s(row.tokens, row.cached)


def _gains(now_s, rows, readers, first_delay, lat, horizon_s) -> np.ndarray:  # type: ignore[no-untyped-def]
    arrival = np.array([r.arrival for r in rows])
    rel = now_s - arrival
    return serve_gain(
        rel + horizon_s,
        np.array([r.ttft for r in rows]),
        np.array([rd.g_expect for rd in readers]),
        np.array([float(r.ntok) for r in rows]),
        rel + first_delay + lat,
        np.array([rd.need for rd in readers]) - arrival,
        np.array([rd.g_read for rd in readers]),
        lat,
    )


def _pack(order: list[int], rows: Sequence[Row], kv_blocks: int, batch: int) -> set[int]:
    """Take requests in ``order`` while they fit the KV cache and the batch (skipping misfits)."""
    free, slots, chosen = kv_blocks, batch, set()
    for i in order:
        if slots > 0 and rows[i].blocks <= free:
            chosen.add(i)
            free -= rows[i].blocks
            slots -= 1
    return chosen


def _park_pool(left, f, gains, tokens, cap, loss_per_s, priced):  # type: ignore[no-untyped-def]
    """The left-out on-device requests that may be parked, in the order they go.

    Priced (overhead-aware): cheapest park loss first (its value plus its recompute at the
    batch's value per second); else lowest priority first (``left`` is in priority order).
    """
    pool = np.array([i for i in left if not f.protected[i]], dtype=np.int64)
    if not priced:
        return pool[::-1].tolist()
    if not pool.size:
        return []
    # The same prices as one request at a time (park_cost_s is elementwise on arrays).
    price = np.asarray(gain_of(gains, pool)) + cap.park_cost_s(f.tokens[pool]) * loss_per_s
    return pool[np.lexsort((pool, -f.blocks[pool], price))].tolist()


def gain_of(gains: list[float], idx: np.ndarray) -> np.ndarray:
    return np.array([gains[i] for i in idx.tolist()])


def _victims(pool, parked, blocks, shortfall, grows):  # type: ignore[no-untyped-def]
    """The first requests of ``pool`` (not yet parked) that free ``shortfall`` blocks (each
    gives back its blocks and the headroom it reserved, ``grows``), or None if too few."""
    found, got = [], 0
    for v in pool:
        if v in parked:
            continue
        if got >= shortfall:
            break
        found.append(v)
        got += blocks[v] + grows(v)
    return found if got >= shortfall else None


def _too_slow(g_read: Sequence[float], cap: Capacity, batch: int) -> bool:
    """The latency trigger: a batch of ``batch`` is slower than its strictest reader (the
    readers that need tokens: ``g_read`` = 1 / their pace)."""
    if not batch or not len(g_read):
        return False
    return cap.token_latency_s(batch) > float(min(g_read))
