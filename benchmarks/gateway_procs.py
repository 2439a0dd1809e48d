"""Processes for the gateway benchmarks: the scripted engine, the gateway and (for comparison) the
LiteLLM proxy, each in its own process on 127.0.0.1, started and stopped by the benchmark (never
left running)."""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_upstream(tokens: int, gap_s: float, first_delay_s: float = 0.0,
                   stamp: bool = False) -> tuple[subprocess.Popen[str], str]:
    """The scripted engine (bench/scripted_engine.py) in a process of its own, with a production
    server's listen backlog; returns the process and its URL."""
    args = [sys.executable, "-m", "bench.scripted_engine", "--tokens", str(tokens),
            "--gap-s", str(gap_s), "--first-delay-s", str(first_delay_s)]
    if stamp:
        args.append("--stamp")
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


def _drain(proc: subprocess.Popen[str], stream: IO[str] | None = None, name: str = "gateway",
           keep: collections.deque[str] | None = None) -> None:
    stream = proc.stderr if stream is None else stream
    assert stream is not None
    for line in stream:
        if keep is not None:
            keep.append(line)
        if "Traceback" in line or "ERROR" in line:
            sys.stderr.write(f"{name}: " + line)


# The LiteLLM proxy's master key: it refuses to start without one (unless told it may run
# unauthenticated, a local-development switch), so the benchmark runs it as deployed and every
# client request carries this key (the other paths ignore the header).
LITELLM_KEY = "sk-andes-bench-" + secrets.token_hex(16)

# What keeps LiteLLM off the network: its bundled model cost map (else it fetches one from the
# internet at import), its other bundled catalogues, telemetry off, no database, no feedback box.
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_TELEMETRY": "False",  # not read by 1.108 (kept for other releases)
    "LITELLM_TELEMETRY_DISABLED": "True",  # 1.108: the veto among LITELLM_TELEMETRY_*
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    # Warnings only, like the gateway's --log-level warning: no access-log line per request.
    "LITELLM_LOG": "WARNING",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_litellm(upstream_url: str, litellm_bin: str) -> tuple[subprocess.Popen[str], str]:
    """The LiteLLM proxy (``litellm --config``) routing model ``test-model`` to the engine at
    ``upstream_url`` as an OpenAI-compatible backend; returns once it answers its health check."""
    tmp = Path(tempfile.mkdtemp(prefix="andes-litellm-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    config = {
        "model_list": [{"model_name": "test-model", "litellm_params": {
            "model": "openai/test-model", "api_base": upstream_url + "/v1",
            "api_key": "sk-dummy"}}],
        "litellm_settings": {"telemetry": False},
        # Clients connect directly (no proxy in front): says so, which also silences a warning.
        "general_settings": {"master_key": LITELLM_KEY, "trusted_proxy_ranges": []},
    }
    cfg = tmp / "config.yaml"
    cfg.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = _free_port()
    drop = ("DATABASE_URL", "DIRECT_URL", "REDIS_URL", "REDIS_HOST", "LITELLM_MASTER_KEY",
            "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTHON")}
    env.update(_LITELLM_ENV, PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    # cwd: the temp dir, so no .env file of the repository (or of the caller's folder) is read.
    proc = subprocess.Popen([litellm_bin, "--config", str(cfg), "--host", "127.0.0.1",
                             "--port", str(port)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env, cwd=tmp)
    log: collections.deque[str] = collections.deque(maxlen=40)
    threading.Thread(target=_drain, args=(proc, proc.stdout, "litellm", log), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health/liveliness", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    stop(proc)
    tail = "".join(log)[-3000:]
    raise RuntimeError(f"the LiteLLM proxy did not start (exit {proc.returncode}):\n{tail}")


def litellm_version(litellm_bin: str) -> str:
    """The installed LiteLLM release, from ``pip show`` in the proxy's own environment."""
    pip = Path(litellm_bin).parent / "pip"
    try:
        out = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    m = re.search(r"^Version:\s*(\S+)", out, re.M)
    return m.group(1) if m else "unknown"


def stop(*procs: subprocess.Popen[Any]) -> None:
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
