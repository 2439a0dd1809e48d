"""``andes gateway --workers N``: N gateway processes on one port, so one machine's gateway uses
every core.

The process that was started is a supervisor: it reserves the port, forks N workers, prints the
listening line once every worker listens, restarts a worker that dies, and on SIGTERM/SIGINT/SIGHUP
stops them all (each shuts down gracefully). Each worker is a whole gateway (its own event loop,
engine connections, streams and slack reporter) listening on the port with ``SO_REUSEPORT``: the
kernel spreads incoming connections across the workers. A worker dies with the supervisor however
that one ends — ``PR_SET_PDEATHSIG`` sends it SIGTERM even when the supervisor is SIGKILLed.

What stays correct across workers:

* **limits** — ``max_concurrent_streams`` is for the whole gateway: each worker publishes its
  count of open streams in shared memory and admits a stream only while the sum is under the
  limit (a check and an increment, not a lock: workers admitting in the same microsecond may
  overshoot by at most N-1). Per-stream limits are per stream, as with one process.
* **metrics** — per worker, with a ``worker`` label, merged at scrape time: the worker that takes
  ``GET /metrics`` fetches every worker's own exposition from its private loopback port and
  returns them all, each sample labelled ``worker="i"`` (sum over ``worker`` for the gateway).
* **slack reporting** — each worker reports the streams it serves (its own reporter, its own
  connection to each engine endpoint); a stream lives in one worker, so the engine's table,
  keyed by stream id, receives every live stream exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

from gateway.config import GatewayConfig

__all__ = ["WorkerSlot", "merge_expositions", "run_workers"]

log = logging.getLogger("andes.gateway")

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 60.0


@dataclass
class WorkerSlot:
    """What one worker shares with the others: its index and the shared arrays."""

    index: int
    streams: Any  # RawArray of int: open streams per worker
    metrics_ports: Any  # RawArray of int: each worker's private metrics port (0: not yet)

    def publish(self, open_streams: int) -> None:
        self.streams[self.index] = open_streams

    def others(self) -> int:
        """Streams open in the other workers."""
        return sum(self.streams) - self.streams[self.index]


def merge_expositions(texts: list[tuple[int, bytes]]) -> bytes:
    """Prometheus text expositions of several workers as one: each family's HELP and TYPE once,
    then its samples from every worker, each with a ``worker`` label."""
    families: dict[str, list[str]] = {}  # family -> header lines, in first-seen order
    samples: dict[str, list[str]] = {}
    for worker, text in texts:
        family = ""
        for line in text.decode().splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                family = line.split(" ", 3)[2]
                if family not in families or worker == texts[0][0]:
                    families.setdefault(family, [])
                    if line not in families[family]:
                        families[family].append(line)
                samples.setdefault(family, [])
            elif line and not line.startswith("#"):
                name, brace, rest = line.partition("{")
                if brace:
                    labelled = f'{name}{{worker="{worker}",{rest}'
                else:
                    name, _, value = line.partition(" ")
                    labelled = f'{name}{{worker="{worker}"}} {value}'
                samples.setdefault(family, []).append(labelled.replace(",}", "}"))
    out: list[str] = []
    for family, header in families.items():
        out.extend(header)
        out.extend(samples.get(family, []))
    return ("\n".join(out) + "\n").encode()


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent ends, however it ends (Linux); a parent already gone
    (it died before this line) ends it now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(0)


def _reserve(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on ``host:port`` (0: a free port): the
    workers' sockets join its port; it takes no connections itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_main(config: GatewayConfig, slot: WorkerSlot, port: int, parent_pid: int,
                 ready: Any) -> None:
    _die_with_parent(parent_pid)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    from gateway.app import serve_worker
    from gateway.cli import run_loop

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve_worker(config, slot, port, lambda: ready.put(slot.index)))


def run_workers(config: GatewayConfig, on_ready: Callable[[int, list[int]], None]) -> int:
    """Supervise ``config.workers`` workers until SIGTERM/SIGINT/SIGHUP; return the exit code.
    ``on_ready(port, pids)`` is called once every worker listens."""
    ctx = multiprocessing.get_context("fork")  # the config and shared arrays are inherited
    n = config.workers
    reserved = _reserve(config.host, config.port)
    port = reserved.getsockname()[1]
    streams: SynchronizedArray[int] = ctx.RawArray("q", n)  # type: ignore[assignment]
    ports: SynchronizedArray[int] = ctx.RawArray("i", n)  # type: ignore[assignment]
    ready = ctx.Queue()
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

    def spawn(i: int) -> multiprocessing.process.BaseProcess:
        streams[i] = 0
        ports[i] = 0
        proc = ctx.Process(target=_worker_main, name=f"andes-gateway-worker-{i}",
                           args=(config, WorkerSlot(i, streams, ports), port, os.getpid(),
                                 ready))
        proc.start()
        return proc

    procs = [spawn(i) for i in range(n)]
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        started: set[int] = set()
        while len(started) < n and not stopping:
            if time.monotonic() > deadline or any(not p.is_alive() for p in procs):
                print("andes gateway: a worker did not start", file=sys.stderr)
                return 1
            with contextlib.suppress(Exception):
                started.add(ready.get(timeout=0.2))
        if not stopping:
            on_ready(port, [p.pid or 0 for p in procs])
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    log.warning("gateway worker %d (pid %s) exited with %s; restarting", i,
                                proc.pid, proc.exitcode)
                    procs[i] = spawn(i)
        return 0
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        grace = config.shutdown_grace_s + 15.0
        for proc in procs:
            proc.join(grace)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        reserved.close()
