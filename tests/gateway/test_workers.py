"""``andes gateway --workers N`` (gateway/workers.py), as a real process tree: connections are
spread over the workers, the stream limit is the whole gateway's, /metrics merges every worker's
samples under a ``worker`` label, and the workers end with the supervisor however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support.wait import until

from bench.scripted_engine import Script
from slack.receiver import SlackServer, SlackServerConfig

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()  # a zombie has ended
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _gateway(upstream_url: str, *flags: str, env: dict[str, str] | None = None
             ) -> Iterator[tuple[subprocess.Popen[str], str, list[int]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "andes", "gateway", "--upstream", upstream_url, "--port", "0",
         "--workers", "2", "--log-level", "warning", *flags],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    pids: list[int] = []
    try:
        assert proc.stderr is not None
        url = ""
        for line in proc.stderr:
            m = re.search(r"listening on (http://\S+) \(2 workers, pids (\d+) (\d+)\)", line)
            if m:
                url, pids = m.group(1), [int(m.group(2)), int(m.group(3))]
                break
        assert url, "the gateway did not start"
        threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True).start()
        yield proc, url, pids
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        for pid in pids:  # never leave a worker behind, whatever the test did
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


async def _metric(s: aiohttp.ClientSession, url: str, name: str) -> dict[str, float]:
    async with s.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            worker = re.search(r'worker="(\d+)"', line)
            key = worker.group(1) if worker else "?"
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def test_workers_share_the_port_the_limit_and_the_metrics(upstream) -> None:
    with _gateway(upstream.url, "--max-concurrent-streams", "2") as (_, url, _pids):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(24):  # a new connection each: the kernel picks a worker per connection
                async with s.post(url + "/v1/chat/completions", json=GOOD) as resp:
                    assert resp.status == 200
            finished = await _metric(s, url, "andes_gateway_streams_total")
            assert set(finished) == {"0", "1"}, finished  # both workers served
            assert sum(finished.values()) == 24
            # The limit is the gateway's: two long streams, wherever they landed, fill it.
            upstream.script = Script(tokens=["slow"], first_delay_s=60)
            held = [await s.post(url + "/v1/chat/completions", json={**GOOD, "stream": True})
                    for _ in range(2)]
            await upstream.wait_for(lambda u: u.requests >= 26, 20)
            for _ in range(6):
                async with s.post(url + "/v1/chat/completions", json=GOOD) as resp:
                    assert resp.status == 429
            for resp in held:
                resp.close()


async def test_every_workers_streams_reach_the_engines_slack_table(upstream) -> None:
    receiver = SlackServer(SlackServerConfig())
    receiver.start()
    try:
        upstream.script = Script(tokens=["slow"], first_delay_s=60)  # streams stay open
        with _gateway(upstream.url, env={"ANDES_GATEWAY_SLACK_URLS": receiver.url,
                                         "ANDES_GATEWAY_SLACK_DISCOVERY": "false"}) as (_, url, _p):
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as s:
                held = [await s.post(url + "/v1/chat/completions", json={**GOOD, "stream": True})
                        for _ in range(12)]
                ids = [r.headers["X-Andes-Stream-Id"] for r in held]
                active = await _metric(s, url, "andes_gateway_active_streams")
                assert set(active) == {"0", "1"} and all(active.values()), active
                await until(lambda: all(receiver.fresh(i, time.time(), 30) for i in ids),
                            "every stream's slack stored", 30)
                for resp in held:
                    resp.close()
    finally:
        receiver.stop()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
async def test_workers_end_with_the_supervisor(upstream, how) -> None:
    with _gateway(upstream.url) as (proc, _url, pids):
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(how)
        proc.wait(30)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # a safety bound: they shut down gracefully
        while any(_alive(pid) for pid in pids):
            assert loop.time() < deadline, "a worker outlived the supervisor"
            await asyncio.sleep(0.05)
