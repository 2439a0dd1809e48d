"""How long a policy takes to decide one engine step: 512 running + 2,000 waiting requests.

Run: ``.venv/bin/python -m benchmarks.policy_speed`` (``--steps N`` to change the sample size).
Records the section "policy-decision-time" of BENCHMARKS.md. The issue's target: median ≤ 1 ms
per step on this machine, pure Python/numpy.

Snapshot: realistic request mix (``bench.snapshots.LOADED``) — prompts 20–1,500 tokens, 0–600
tokens generated so far, readers at 3–10 tok/s with 0.5–2 s TTFT, a quarter with a fresh slack
report (some paused), a tenth of the waiting ones preempted. Each step advances the clock by one
token latency and delivers a token to every running request (outside the timed call); decisions
are not applied, so the pressure persists.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.snapshots import LOADED, random_snapshot
from benchmarks.record import machine_line, record
from engine.policy import Capacity, ReqState, RequestView, get_policy
from engine.policy.snapshot import Snapshot

BLOCK = LOADED.block_size
LATENCY_S = 0.04


def build(n_running: int, n_waiting: int, seed: int = 0) -> tuple[list[RequestView], float]:
    now = 1000.0
    views = random_snapshot(random.Random(seed), n_running + n_waiting, now, LOADED, n_running)
    return views, now


def time_policy(name: str, views: list[RequestView], now: float, cap: Capacity, steps: int):
    """Time ``steps`` calls, the snapshot kept as the adapters keep it (a :class:`Snapshot`
    told what changed: one token delivered to every running request per step)."""
    policy = get_policy(name)
    snap = Snapshot()
    for v in views:
        snap.add(v)
    running = [v for v in views if v.state is ReqState.RUNNING]
    triggered: list[float] = []
    plain: list[float] = []
    for _ in range(steps):
        t0 = time.perf_counter()
        policy.schedule(now, snap, cap)
        dt = time.perf_counter() - t0
        (triggered if getattr(policy, "last_triggered", False) else plain).append(dt)
        now += LATENCY_S
        for v in running:
            v.output_tokens += 1
            snap.deliver(v.req_id, now)
            blocks = -(-(v.prompt_tokens + v.output_tokens) // BLOCK)
            if blocks != v.kv_blocks:
                v.kv_blocks = blocks
                snap.touch(v.req_id)
    return triggered, plain


def stats(samples: list[float]) -> tuple[str, str, str]:
    if not samples:
        return "—", "—", "0"
    ms = sorted(s * 1e3 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"{statistics.median(ms):.3f}", f"{p99:.3f}", str(len(ms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()

    rows = []
    for label, n_run, n_wait in (("512 running + 2,000 waiting", 512, 2000),
                                 ("512 running, nothing waiting", 512, 0)):  # fmt: skip
        views, now = build(n_run, n_wait)
        held = sum(-(-(v.prompt_tokens + v.output_tokens + 600) // BLOCK) for v in views[:n_run])
        cap = Capacity(
            kv_blocks=held, block_size=BLOCK, max_batch=512,
            token_latency_s=lambda b: 0.02 + 0.00004 * b,  # 0.04 s at 512: faster than 1/10 s
            prefill_latency_s=lambda tokens: 0.01 + 0.0001 * tokens,
        )  # fmt: skip
        for name in ("andes", "fcfs", "lqf", "round_robin"):
            views, now = build(n_run, n_wait)  # fresh snapshot per policy
            trig, plain = time_policy(name, views, now, cap, args.steps)
            for kind, samples in (("knapsack (triggered)", trig), ("untriggered", plain)):
                if samples:
                    rows.append((label, name, kind if name == "andes" else "—", *stats(samples)))

    table = ["| snapshot | policy | andes step | median ms | p99 ms | steps |",
             "|---|---|---|---:|---:|---:|"]  # fmt: skip
    table += ["| " + " | ".join(r) + " |" for r in rows]
    target = [r for r in rows if r[0].startswith("512 running + 2,000") and r[1] == "andes"]
    verdict = ", ".join(f"{r[2]}: median {r[3]} ms" for r in target)
    met = all(float(r[3]) <= 1.0 for r in target)
    body = "\n".join(
        [
            "## policy-decision-time",
            "",
            f"Command: `.venv/bin/python -m benchmarks.policy_speed --steps {args.steps}`  ",
            f"Machine: {machine_line()}  ",
            "Target: median ≤ 1 ms per `schedule()` for 512 running + 2,000 waiting (andes).  ",
            f"Verdict: **{'met' if met else 'missed'}** — andes on 512 + 2,000: {verdict}.",
            "",
            *table,
            "",
            "With 2,000 waiting that cannot fit, every andes step is under memory pressure,",
            "so every step runs the knapsack; the untriggered (FCFS) path is timed on the",
            "snapshot without waiting requests. The knapsack re-reads only the request views",
            "that changed since the last step (here the 512 running ones), values every running",
            "request but only the waiting ones whose upper-bound value density could reach a",
            "packing (several hundred here: the packings reach deep into the waiting queue), and",
            "all candidate batch sizes in one numpy call. Other work shared the 2 cores during",
            "the run (load average below), so treat p99 as pessimistic.",
        ]
    )
    import os

    body += f"\n\nLoad average at the end of the run: {os.getloadavg()[0]:.2f} (2 cores)."
    print(body)
    record("policy-decision-time", body)


if __name__ == "__main__":
    main()
