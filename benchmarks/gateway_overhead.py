"""What the gateway adds to latency with pacing off: TTFT and per-token delivery latency, p50/p99,
through the gateway versus straight from the scripted engine, and through the LiteLLM proxy on the
same engine for comparison.

The engine (a separate process) writes each token's emission time (``time.monotonic()``, one clock
for every process on the machine) as the token's text, so the client measures each token's
delivery latency exactly on every path. Requests run one at a time, so this is the added latency
of an idle gateway, not its behaviour under load (see gateway_scale.py).

    python benchmarks/gateway_overhead.py [--requests 200] [--tokens 50] [--gap-s 0.005]
                                          [--litellm /opt/litellm-venv/bin/litellm]

The LiteLLM path needs the proxy installed in its own environment, outside this project's::

    python3 -m venv /opt/litellm-venv && /opt/litellm-venv/bin/pip install 'litellm[proxy]'

Without it (or with ``--litellm ''``) that path is skipped.
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
from benchmarks.gateway_procs import (
    LITELLM_KEY,
    litellm_version,
    start_gateway,
    start_litellm,
    start_upstream,
    stop,
)
from benchmarks.record import command_line, machine_line, record

BODY = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
# The same request on every path, authenticated where it is a proxy: LiteLLM refuses to run without
# its master key, so the Andes gateway checks the same key (the scripted engine ignores it).
HEADERS = {"Authorization": f"Bearer {LITELLM_KEY}"}
DEFAULT_LITELLM = "/opt/litellm-venv/bin/litellm"


def _event_data(event: bytes) -> bytes:
    """The data of one SSE event (its ``data:`` lines joined; the space after the colon is
    optional), b"" if it has none."""
    return b"\n".join(line[5:].removeprefix(b" ") for line in event.split(b"\n")
                      if line.startswith(b"data:"))


async def one(session: aiohttp.ClientSession, url: str) -> tuple[float, list[float]]:
    """(TTFT, [delivery latency of each token]) in seconds for one streamed request.

    Each stamp is timed on its own, so a proxy that merges several tokens into one chunk still
    yields one latency per token (the merged ones simply arrive later)."""
    t0 = time.monotonic()
    ttft, latencies, buf = None, [], b""
    async with session.post(url + "/v1/chat/completions", json=BODY, headers=HEADERS) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_any():
            now = time.monotonic()
            buf = (buf + chunk).replace(b"\r\n", b"\n")  # SSE allows CRLF line ends
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = _event_data(event)
                if not data.startswith(b"{"):
                    continue
                obj = json.loads(data)
                choices = obj.get("choices") or []
                text = (choices[0].get("delta") or {}).get("content") if choices else None
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
    ap.add_argument("--litellm", metavar="BIN", default=None,
                    help=f"the LiteLLM proxy's executable, measured as a third path (default: "
                         f"{DEFAULT_LITELLM} if it exists; '' skips it)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    litellm_bin = _litellm_bin(ap, args.litellm)
    rounds = 4
    ttft, lat = _measure_paths(args, litellm_bin, rounds)
    expected = rounds * (args.requests // rounds) * args.tokens
    for p in lat:
        if len(lat[p]) != expected:
            print(f"warning: {p}: {len(lat[p])} token stamps parsed, {expected} expected",
                  file=sys.stderr)
    body = _report(args, ttft, lat, litellm_version(litellm_bin) if "litellm" in lat else "")
    print(body)
    if not args.no_record:
        record("gateway-overhead", body)
    return 0


def _litellm_bin(ap: argparse.ArgumentParser, litellm_bin: str | None) -> str:
    """The LiteLLM executable to measure, or "" to skip that path (saying why)."""
    if litellm_bin is None:
        litellm_bin = DEFAULT_LITELLM if Path(DEFAULT_LITELLM).exists() else ""
        if not litellm_bin:
            print(f"LiteLLM path skipped: {DEFAULT_LITELLM} not found (install it there, or pass "
                  "--litellm BIN)", file=sys.stderr)
    elif litellm_bin and not Path(litellm_bin).exists():
        ap.error(f"--litellm: {litellm_bin} not found")
    elif not litellm_bin:
        print("LiteLLM path skipped: --litellm ''", file=sys.stderr)
    return litellm_bin


Series = dict[str, list[float]]  # path → seconds


def _measure_paths(
    args: argparse.Namespace, litellm_bin: str, rounds: int
) -> tuple[Series, Series]:
    """TTFT and per-token latencies per path (direct, gateway, litellm), the processes stopped."""
    procs = []
    try:
        up, up_url = start_upstream(args.tokens, args.gap_s, stamp=True)
        procs.append(up)
        gw, gw_url = start_gateway(up_url, "--pacing", "off", "--log-level", "warning",
                                   "--api-key", LITELLM_KEY)
        procs.append(gw)
        paths = {"direct": up_url, "gateway": gw_url}
        if litellm_bin:
            ll, ll_url = start_litellm(up_url, litellm_bin)
            procs.append(ll)
            paths["litellm"] = ll_url
        # Interleave the paths in rounds so drift on a shared machine hits all of them alike.
        ttft: Series = {p: [] for p in paths}
        lat: Series = {p: [] for p in paths}
        for _ in range(rounds):
            for p, url in paths.items():
                t, l_ = asyncio.run(measure(url, args.requests // rounds))
                ttft[p] += t
                lat[p] += l_
    finally:
        stop(*reversed(procs))
    return ttft, lat


def _report(args: argparse.Namespace, ttft: Series, lat: Series, version: str) -> str:
    """The BENCHMARKS.md section: the percentile table, the setup, the means."""
    has_ll = "litellm" in lat
    rows = []
    for name, series, target in (("TTFT", ttft, "≤ 1 ms"),
                                 ("per-token delivery latency", lat, "≤ 5 ms")):
        for q in (0.5, 0.99):
            dv, gv = pct(series["direct"], q) * 1e3, pct(series["gateway"], q) * 1e3
            row = (f"| {name} p{int(q * 100)} | {dv:.3f} | {gv:.3f} | {gv - dv:+.3f} | "
                   f"{target if q == 0.5 or name != 'TTFT' else '—'} |")
            if has_ll:
                lv = pct(series["litellm"], q) * 1e3
                row += f" {lv:.3f} | {lv - dv:+.3f} |"
            rows.append(row)
    header = "| metric | direct (ms) | through gateway (ms) | added (ms) | target (added) |"
    rule = "| --- | --- | --- | --- | --- |"
    if has_ll:
        header += " through LiteLLM (ms) | added by LiteLLM (ms) |"
        rule += " --- | --- |"
    setup = (
        f"Setup: scripted engine and gateway in separate processes on 127.0.0.1; {args.requests} "
        f"sequential streamed requests per path, {args.tokens} tokens each, "
        f"{args.gap_s * 1e3:g} ms "
        "apart; the engine stamps each token with its emission time, so per-token latency is "
        "exact. Added = gateway − direct, per percentile.")
    if has_ll:
        setup += (
            f" LiteLLM proxy {version} (`litellm --config`, its default uvicorn server and one "
            "worker, master key, no database, log level WARNING) in its own process on "
            "127.0.0.1, routing `test-model` to the same engine as `openai/test-model`, measured "
            "in the same rounds; added by LiteLLM = LiteLLM − direct.")
    mean = (f"Mean per-token latency: direct {statistics.mean(lat['direct']) * 1e3:.3f} ms, "
            f"gateway {statistics.mean(lat['gateway']) * 1e3:.3f} ms")
    if has_ll:
        mean += f", LiteLLM {statistics.mean(lat['litellm']) * 1e3:.3f} ms"
    return "\n".join([
        "## Gateway overhead (pacing off)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}  ",
        setup,
        "",
        header,
        rule,
        *rows,
        "",
        mean + ".",
    ])


if __name__ == "__main__":
    sys.exit(main())
