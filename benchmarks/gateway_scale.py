"""How many concurrent paced streams one gateway process sustains with p99 pacing lateness
≤ 50 ms (target ≥ 5,000), and its memory per stream.

Three processes on 127.0.0.1: the scripted engine (answers every request with a burst of
``--tokens`` tokens, as a fast engine would), the gateway (server pacing at ``--tds`` tokens/s, so
each stream is released over tokens/tds seconds), and a load generator (``--client`` mode of this
script, raw asyncio streams on uvloop when installed) that opens N SSE streams at once and reads
them to the end. The gateway runs as ``andes gateway`` does (on uvloop when installed). Lateness
is the gateway's own histogram (``andes_gateway_pacing_lateness_seconds``: write time − due time
of every paced chunk), read from /metrics before and after each level; p99 is the upper edge of
the bucket holding it.
Memory per stream = (gateway RSS with N streams open − RSS before) / N.

    python benchmarks/gateway_scale.py [--levels 500,1000,2000,5000] [--tokens 24] [--tds 4.8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.gateway_procs import rss_kib, start_gateway, start_upstream, stop
from benchmarks.record import command_line, machine_line, record

METRIC = "andes_gateway_pacing_lateness_seconds_bucket"


def scrape(url: str) -> tuple[dict[float, float], float]:
    """(lateness bucket upper edge -> cumulative count, active streams)."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    buckets, active = {}, 0.0
    for line in text.splitlines():
        if line.startswith(METRIC):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("andes_gateway_active_streams "):
            active = float(line.rsplit(" ", 1)[1])
    return buckets, active


def p99(before: dict[float, float], after: dict[float, float]) -> tuple[float, float]:
    """(p99 upper bound in seconds, chunks) from the histogram's growth."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta[float("inf")]
    for le in sorted(delta):
        if delta[le] >= 0.99 * total:
            return le, total
    return float("inf"), total


async def client(url: str, n: int, tds: float) -> dict[str, int]:
    """Open ``n`` streams at once and read each to its end, over raw asyncio streams: an aiohttp
    client cost the load generator about as much CPU as the gateway, on the same cores."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "qoe": {"tds": tds}}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               "Connection: close\r\n\r\n").encode() + body
    done = errors = 0

    async def one() -> None:
        nonlocal done, errors
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            head, tail = b"", b""
            while chunk := await reader.read(1 << 16):
                if len(head) < 12:
                    head += chunk[:12]
                tail = (tail + chunk)[-64:]
            writer.close()
            if head.startswith(b"HTTP/1.1 200") and b"data: [DONE]\n\n" in tail:
                done += 1
            else:
                errors += 1
        except OSError:
            errors += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return {"done": done, "errors": errors}


def run_level(gw_url: str, gw_pid: int, n: int, tds: float, tokens: int) -> dict[str, float]:
    before, _ = scrape(gw_url)
    rss0 = rss_kib(gw_pid)
    t0 = time.monotonic()
    load = subprocess.Popen([sys.executable, __file__, "--client", gw_url, str(n), str(tds)],
                            stdout=subprocess.PIPE, text=True)
    peak_active, peak_rss = 0.0, rss0
    while load.poll() is None:
        _, active = scrape(gw_url)
        if active >= peak_active:
            peak_active, peak_rss = active, max(peak_rss, rss_kib(gw_pid))
        time.sleep(0.25)
    out = json.loads(load.stdout.read() if load.stdout else "{}")
    wall = time.monotonic() - t0
    after, _ = scrape(gw_url)
    late, chunks = p99(before, after)
    return {"n": n, "done": out.get("done", 0), "errors": out.get("errors", 0),
            "peak_active": peak_active, "p99_s": late, "chunks": chunks, "wall_s": wall,
            "kib_per_stream": (peak_rss - rss0) / max(peak_active, 1),
            "ideal_s": tokens / tds}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        url, n, tds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        try:
            import uvloop
            run = uvloop.run
        except ImportError:
            run = asyncio.run
        print(json.dumps(run(client(url, n, tds))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="500,1000,2000,5000")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--tds", type=float, default=4.8)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    up, up_url = start_upstream(args.tokens, 0.0)
    gw, gw_url = start_gateway(up_url, "--log-level", "warning", "--max-concurrent-streams",
                               "100000")
    results = []
    try:
        for n in (int(x) for x in args.levels.split(",")):
            r = run_level(gw_url, gw.pid, n, args.tds, args.tokens)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        stop(gw, up)
    rows = [f"| {r['n']} | {int(r['peak_active'])} | {int(r['done'])} | {int(r['errors'])} | "
            f"{int(r['chunks'])} | ≤ {r['p99_s'] * 1e3:g} | {r['wall_s']:.1f} "
            f"(ideal {r['ideal_s']:.1f}) | {r['kib_per_stream']:.0f} |" for r in results]
    ok = [r["n"] for r in results if r["p99_s"] <= 0.05 and r["errors"] == 0]
    body = "\n".join([
        "## Gateway scale (concurrent paced streams)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}  ",
        f"Setup: scripted engine, gateway and load generator in three processes on one machine "
        f"(they share its cores); each stream gets a burst of {args.tokens} tokens paced out at "
        f"{args.tds:g} tokens/s (server pacing, 50 ms frames); all N streams open at once.",
        "",
        "| streams N | peak active | completed | errors | paced chunks | p99 lateness (ms) | "
        "wall s | gateway KiB/stream |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Largest N measured with p99 lateness ≤ 50 ms and no errors: "
        f"{max(ok) if ok else 'none'} (target ≥ 5,000).",
    ])
    print(body)
    if not args.no_record:
        record("gateway-scale", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
