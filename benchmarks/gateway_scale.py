"""How many concurrent paced streams one gateway process sustains with p99 pacing lateness
≤ 50 ms (target ≥ 5,000), what it costs in CPU per paced write, and its memory per stream.

Three processes on 127.0.0.1: the scripted engine (answers every request with a burst of
``--tokens`` tokens, as a fast engine would), the gateway (server pacing at ``--tds`` tokens/s, so
each stream is released over tokens/tds seconds; ``--workers N`` for N gateway processes), and a
load generator (``--client`` mode of this script, raw asyncio streams on uvloop when installed)
that opens N SSE streams — all at once, or spread over ``--ramp-s`` seconds — and reads them to
the end. The gateway runs as ``andes gateway`` does (on uvloop when installed). Lateness is the
gateway's own histogram (``andes_gateway_pacing_lateness_seconds``: write time − due time of
every paced chunk, summed over workers), read from /metrics before and after each level; p99 is
the upper edge of the bucket holding it. CPU is the gateway processes' user+system time during
the level, divided by the paced chunks written.

Memory per stream = (gateway RSS with N streams open − RSS before) / N, while they stream; per
idle stream (``--idle N``): the same with N streams open whose engine has not answered yet
(nothing buffered: what an open stream costs by itself). The machine's load average is recorded
beside the numbers: the benchmark shares the machine with whatever else runs.

    python benchmarks/gateway_scale.py [--levels 500,1000,2000,5000] [--tokens 24] [--tds 4.8]
        [--workers 1] [--ramp-s 0] [--idle 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.gateway_procs import rss_kib, start_gateway, start_upstream, stop
from benchmarks.record import command_line, machine_line, record

METRIC = "andes_gateway_pacing_lateness_seconds_bucket"
# What BENCHMARKS.md recorded before issue 12 (2026-12-01, the same command with the defaults).
BEFORE = {500: (5, 28), 1000: (25, 25), 2000: (250, 23), 5000: (1000, 20)}  # p99 ms, KiB


def scrape(url: str) -> tuple[dict[float, float], float]:
    """(lateness bucket upper edge -> cumulative count, active streams), summed over workers."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    buckets: dict[float, float] = {}
    active = 0.0
    for line in text.splitlines():
        if line.startswith(METRIC):
            le = float(line.split('le="', 1)[1].split('"', 1)[0])
            buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("andes_gateway_active_streams"):
            active += float(line.rsplit(" ", 1)[1])
    return buckets, active


def p99(before: dict[float, float], after: dict[float, float]) -> tuple[float, float]:
    """(p99 upper bound in seconds, chunks) from the histogram's growth."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta[float("inf")]
    for le in sorted(delta):
        if delta[le] >= 0.99 * total:
            return le, total
    return float("inf"), total


def gateway_pids(pid: int) -> list[int]:
    """The gateway process and its workers (``--workers``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(c) for c in f.read().split())]
    except OSError:
        return [pid]


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss(pids: list[int]) -> int:
    return sum(rss_kib(p) for p in pids)


async def client(url: str, n: int, tds: float, ramp_s: float) -> dict[str, int]:
    """Open ``n`` streams (at once, or spread over ``ramp_s``) and read each to its end, over raw
    asyncio streams: an aiohttp client cost the load generator about as much CPU as the gateway,
    on the same cores."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "qoe": {"tds": tds}}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
               "Connection: close\r\n\r\n").encode() + body
    done = errors = 0

    async def one(i: int) -> None:
        nonlocal done, errors
        if ramp_s:
            await asyncio.sleep(ramp_s * i / n)
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

    await asyncio.gather(*(one(i) for i in range(n)))
    return {"done": done, "errors": errors}


async def idle_client(url: str, n: int, hold_s: float) -> None:
    """Open ``n`` streams and hold them, reading nothing, for ``hold_s`` seconds."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    conns = []
    for _ in range(n):
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        conns.append(writer)
    await asyncio.sleep(hold_s)
    for writer in conns:
        writer.close()


def run_level(gw_url: str, pids: list[int], n: int, tds: float, tokens: int,
              ramp_s: float) -> dict[str, float]:
    before, _ = scrape(gw_url)
    rss0, cpu0, load0 = rss(pids), cpu_s(pids), os.getloadavg()[0]
    t0 = time.monotonic()
    load = subprocess.Popen([sys.executable, __file__, "--client", gw_url, str(n), str(tds),
                             str(ramp_s)], stdout=subprocess.PIPE, text=True)
    peak_active, peak_rss = 0.0, rss0
    while load.poll() is None:
        _, active = scrape(gw_url)
        if active >= peak_active:
            peak_active, peak_rss = active, max(peak_rss, rss(pids))
        time.sleep(0.25)
    out = json.loads(load.stdout.read() if load.stdout else "{}")
    wall = time.monotonic() - t0
    cpu = cpu_s(pids) - cpu0
    after, _ = scrape(gw_url)
    late, chunks = p99(before, after)
    return {"n": n, "done": out.get("done", 0), "errors": out.get("errors", 0),
            "peak_active": peak_active, "p99_s": late, "chunks": chunks, "wall_s": wall,
            "kib_per_stream": (peak_rss - rss0) / max(peak_active, 1),
            "cpu_us_per_chunk": cpu / max(chunks, 1) * 1e6, "cpu_s": cpu,
            "load": max(load0, os.getloadavg()[0]), "ideal_s": tokens / tds}


def idle_level(upstream_url: str, n: int, workers: int) -> dict[str, float]:
    """Bytes per open stream whose engine has not answered (held 60 s by the engine)."""
    gw, gw_url = start_gateway(upstream_url, "--log-level", "warning", "--max-concurrent-streams",
                               "100000", "--workers", str(workers))
    try:
        time.sleep(1.0)
        pids = gateway_pids(gw.pid)
        rss0 = rss(pids)
        hold = subprocess.Popen([sys.executable, __file__, "--idle-client", gw_url, str(n)])
        deadline = time.monotonic() + 120
        active = 0.0
        while time.monotonic() < deadline and active < n:
            _, active = scrape(gw_url)
            time.sleep(0.5)
        time.sleep(1.0)
        rss1 = rss(pids)
        hold.terminate()
        hold.wait(30)
        return {"n": n, "active": active, "bytes_per_stream": (rss1 - rss0) * 1024 / max(active, 1)}
    finally:
        stop(gw)


def _table(results: list[dict[str, float]]) -> list[str]:
    rows = []
    for r in results:
        before = BEFORE.get(int(r["n"]))
        was = f"≤ {before[0]} ms, {before[1]} KiB" if before else "—"
        rows.append(f"| {r['n']} | {int(r['peak_active'])} | {int(r['done'])} | "
                    f"{int(r['errors'])} | {int(r['chunks'])} | ≤ {r['p99_s'] * 1e3:g} | "
                    f"{r['cpu_us_per_chunk']:.0f} | {r['wall_s']:.1f} (ideal {r['ideal_s']:.1f}) | "
                    f"{r['kib_per_stream']:.0f} | {r['load']:.1f} | {was} |")
    return rows


def _client_main(argv: list[str]) -> int:
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        run = asyncio.run
    if argv[0] == "--client":
        print(json.dumps(run(client(argv[1], int(argv[2]), float(argv[3]), float(argv[4])))))
    else:
        run(idle_client(argv[1], int(argv[2]), 3600))
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ("--client", "--idle-client"):
        return _client_main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="500,1000,2000,5000")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--tds", type=float, default=4.8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--ramp-s", type=float, default=0.0,
                    help="spread the starts of a level's streams over this long")
    ap.add_argument("--idle", type=int, default=0, help="also measure N idle streams' memory")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    up, up_url = start_upstream(args.tokens, 0.0)
    gw, gw_url = start_gateway(up_url, "--log-level", "warning", "--max-concurrent-streams",
                               "100000", "--workers", str(args.workers))
    results = []
    try:
        time.sleep(1.0)
        pids = gateway_pids(gw.pid)
        for n in (int(x) for x in args.levels.split(",")):
            r = run_level(gw_url, pids, n, args.tds, args.tokens, args.ramp_s)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        stop(gw, up)
    idle = None
    if args.idle:
        slow, slow_url = start_upstream(1, 0.0, first_delay_s=3600)
        try:
            idle = idle_level(slow_url, args.idle, args.workers)
            print(json.dumps(idle), flush=True)
        finally:
            stop(slow)
    body = _report(args, results, idle)
    print(body)
    if not args.no_record:
        record("gateway-scale", body)
    return 0


def _report(args: argparse.Namespace, results: list[dict[str, float]],
            idle: dict[str, float] | None) -> str:
    ok = [r["n"] for r in results if r["p99_s"] <= 0.05 and r["errors"] == 0]
    start = (f"their starts spread over {args.ramp_s:g} s" if args.ramp_s
             else "all N streams open at once")
    lines = [
        "## Gateway scale (concurrent paced streams)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}; load average during the run in the table  ",
        f"Setup: scripted engine, gateway ({args.workers} process"
        f"{'es' if args.workers > 1 else ''}) and load generator on one machine (they share its "
        f"cores); each stream gets a burst of {args.tokens} tokens paced out at {args.tds:g} "
        f"tokens/s (server pacing, 50 ms frames); {start}. CPU = gateway user+system time per "
        "paced chunk written (everything included: accepting, parsing, the engine request, "
        "pacing, writing). Before = BENCHMARKS.md of 2026-12-01 (same command, before issue 12).",
        "",
        "| streams N | peak active | completed | errors | paced chunks | p99 lateness (ms) | "
        "gateway CPU µs/chunk | wall s | gateway KiB/stream | load avg | before (p99, KiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *_table(results),
        "",
        f"Largest N measured with p99 lateness ≤ 50 ms and no errors: "
        f"{max(ok) if ok else 'none'} (target ≥ 5,000).",
    ]
    if idle is not None:
        lines += ["", f"Idle streams (open, engine not answering yet): {int(idle['active'])} held, "
                      f"{idle['bytes_per_stream']:.0f} bytes of gateway RSS per stream."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
