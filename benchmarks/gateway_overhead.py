"""What the gateway adds to latency with pacing off: TTFT and per-token delivery latency, p50/p99,
through the gateway versus straight from the scripted engine.

The engine (a separate process) writes each token's emission time (``time.monotonic()``, one clock
for every process on the machine) as the token's text, so the client measures each token's
delivery latency exactly on both paths. Requests run one at a time, so this is the added latency
of an idle gateway, not its behaviour under load (see gateway_scale.py).

    python benchmarks/gateway_overhead.py [--requests 200] [--tokens 50] [--gap-s 0.005]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.gateway_procs import start_gateway, start_upstream, stop
from benchmarks.record import command_line, machine_line, record

BODY = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, list[float]]:
    """(TTFT, [delivery latency of each token]) in seconds for one streamed request."""
    t0 = time.monotonic()
    ttft, latencies, buf = None, [], b""
    async with session.post(url + "/v1/chat/completions", json=BODY) as resp:
        async for chunk in resp.content.iter_any():
            now = time.monotonic()
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: {"):
                    continue
                obj = json.loads(event[6:])
                choices = obj.get("choices") or []
                text = choices[0]["delta"].get("content") if choices else None
                if not text:
                    continue
                for stamp in text.split():
                    if ttft is None:
                        ttft = now - t0
                    latencies.append(now - float(stamp))
    assert ttft is not None
    return ttft, latencies


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure(url: str, requests: int) -> tuple[list[float], list[float]]:
    ttfts, lats = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(10):  # warm up connections and code paths
            await one(session, url)
        for _ in range(requests):
            ttft, lat = await one(session, url)
            ttfts.append(ttft)
            lats += lat
    return ttfts, lats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--gap-s", type=float, default=0.005)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    up, up_url = start_upstream(args.tokens, args.gap_s, stamp=True)
    gw, gw_url = start_gateway(up_url, "--pacing", "off", "--log-level", "warning")
    try:
        # Interleave the two paths in rounds so drift on a shared machine hits both alike.
        d_ttft, d_lat, g_ttft, g_lat = [], [], [], []
        rounds = 4
        for _ in range(rounds):
            t, l_ = asyncio.run(measure(up_url, args.requests // rounds))
            d_ttft += t
            d_lat += l_
            t, l_ = asyncio.run(measure(gw_url, args.requests // rounds))
            g_ttft += t
            g_lat += l_
    finally:
        stop(gw, up)
    rows = []
    for name, d, g, target in (("TTFT", d_ttft, g_ttft, "≤ 1 ms"),
                               ("per-token delivery latency", d_lat, g_lat, "≤ 5 ms")):
        for q in (0.5, 0.99):
            dv, gv = pct(d, q) * 1e3, pct(g, q) * 1e3
            rows.append(f"| {name} p{int(q * 100)} | {dv:.3f} | {gv:.3f} | {gv - dv:+.3f} | "
                        f"{target if q == 0.5 or name != 'TTFT' else '—'} |")
    body = "\n".join([
        "## Gateway overhead (pacing off)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}  ",
        f"Setup: scripted engine and gateway in separate processes on 127.0.0.1; {args.requests} "
        f"sequential streamed requests per path, {args.tokens} tokens each, "
        f"{args.gap_s * 1e3:g} ms "
        "apart; the engine stamps each token with its emission time, so per-token latency is "
        "exact. Added = gateway − direct, per percentile.",
        "",
        "| metric | direct (ms) | through gateway (ms) | added (ms) | target (added) |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Mean per-token latency: direct {statistics.mean(d_lat) * 1e3:.3f} ms, gateway "
        f"{statistics.mean(g_lat) * 1e3:.3f} ms.",
    ])
    print(body)
    if not args.no_record:
        record("gateway-overhead", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
