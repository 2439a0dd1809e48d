"""Processes for the gateway benchmarks: the scripted engine and the gateway, each in its own
process on 127.0.0.1, started and stopped by the benchmark (never left running)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = ROOT / "tests" / "gateway" / "scripted_upstream.py"


# The scripted engine, listening with a production server's backlog (vLLM's uvicorn: 2048) rather
# than aiohttp's 128: a burst of thousands of connects beyond the backlog would wait out SYN
# retransmits (1 s, 3 s, 7 s) and the benchmark would measure the kernel, not the gateway.
_UPSTREAM_MAIN = (
    "import runpy, sys; from aiohttp import web; "
    "web.TCPSite.__init__.__kwdefaults__['backlog'] = 4096; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_upstream(tokens: int, gap_s: float, first_delay_s: float = 0.0,
                   stamp: bool = False) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-c", _UPSTREAM_MAIN, str(UPSTREAM), str(tokens), str(gap_s),
            str(first_delay_s)]
    if stamp:
        args.append("stamp")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the scripted upstream did not start: {url!r}")
    return proc, url


def start_gateway(upstream_url: str, *flags: str) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "andes", "gateway", "--upstream", upstream_url, "--port", "0",
            *flags]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on (http://[\d.]+:\d+)", line)
        if m:
            # Keep reading the log (one line per stream) so the pipe never fills and blocks it.
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("the gateway did not start")


def _drain(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Traceback" in line or "ERROR" in line:
            sys.stderr.write("gateway: " + line)


def stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
