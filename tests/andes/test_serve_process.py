"""``andes serve`` as a real process tree: it never leaves an engine behind, and it wires the
slack channel.

The engine here is a real server standing in for vLLM (``fake_vllm/``: put first on the
``PYTHONPATH`` that ``andes serve`` hands the engine): it listens, spawns a child as vLLM spawns
its engine core, and runs the slack receiver as the scheduler does — in two seconds, not a minute.
The real vLLM's case is ``tests/engine/vllm/test_serve_e2e.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process groups and /proc")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: it is dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s} s")
        time.sleep(0.05)


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    record_path: Path
    lines: list[str]

    @property
    def record(self) -> dict:
        return json.loads(self.record_path.read_text())

    def engine_pids(self) -> list[int]:
        r = self.record
        return [r["ppid"], r["pid"], r["core_pid"]]  # the guard, "vLLM", its "engine core"

    def gateway_url(self) -> str:
        line = next(line for line in self.lines if "demo chat page" in line)
        return line.split()[-1].rstrip("/")


def read_until(stream: IO[str], needle: str, lines: list[str], timeout_s: float = 60) -> None:
    """Read ``stream`` line by line until one holds ``needle`` (bounded by a timer thread)."""
    import threading

    found = threading.Event()

    def reader() -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if needle in line:
                found.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(timeout_s):
        raise AssertionError(f"no {needle!r} within {timeout_s} s; output so far: {lines}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list[Serve] = []

    def start(*args: str, stdout: int = subprocess.PIPE, env: dict | None = None) -> Serve:
        record = tmp_path / f"engine-{len(started)}.json"
        environ = {**os.environ, "PYTHONPATH": str(FAKE_VLLM),
                   "ANDES_SLACK_DIR": str(tmp_path / "slack"),
                   "ANDES_FAKE_ENGINE_RECORD": str(record), **(env or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "andes", "serve", "--model", "fake-model", "--port", "0",
             "--engine-log", str(tmp_path / "engine.log"), "--shutdown-grace-s", "1", *args],
            stdout=stdout, stderr=subprocess.PIPE, text=True, env=environ)
        s = Serve(proc, record, [])
        started.append(s)
        if stdout == subprocess.PIPE:
            assert proc.stdout is not None
            read_until(proc.stdout, "Ctrl-C to stop", s.lines)
        else:
            wait_until(record.exists, 60, "the engine")
        return s

    yield start
    for s in started:  # never leave anything behind, whatever the test did
        if s.proc.poll() is None:
            s.proc.kill()
        if s.record_path.exists():
            for pid in s.engine_pids():
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def assert_engine_gone(s: Serve) -> None:
    pids = s.engine_pids()
    wait_until(lambda: not any(alive(p) for p in pids), 40,
               f"the engine's processes {pids} ending")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_stops_the_engine_and_exits_cleanly(serve, sig: signal.Signals) -> None:
    s = serve()
    pids = s.engine_pids()
    assert all(alive(p) for p in pids)
    s.proc.send_signal(sig)
    out, err = s.proc.communicate(timeout=60)
    assert s.proc.returncode == 0, err
    assert "stopping the engine" in out and "Traceback" not in err
    assert not any(alive(p) for p in pids), "the engine outlived andes serve"


def test_parent_killed_outright_takes_the_engine_with_it(serve) -> None:
    # SIGKILL: no handler, no finally in andes serve runs; the guard notices on its own.
    s = serve()
    s.proc.kill()
    s.proc.wait(timeout=10)
    assert_engine_gone(s)


def test_broken_output_pipe_then_ctrl_c_still_stops_the_engine(serve) -> None:
    # `andes serve | tee log`, then Ctrl-C: tee is gone before serve prints its last lines.
    s = serve()
    assert s.proc.stdout is not None
    s.proc.stdout.close()
    s.proc.send_signal(signal.SIGINT)
    s.proc.wait(timeout=60)
    err = s.proc.stderr.read() if s.proc.stderr else ""
    assert s.proc.returncode == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err
    assert not any(alive(p) for p in s.engine_pids())


def test_terminal_closed_while_the_engine_starts(serve) -> None:
    # SIGHUP before the engine is ready (a closed SSH session during the model load).
    s = serve(stdout=subprocess.DEVNULL, env={"ANDES_FAKE_ENGINE_LOAD_S": "60"})
    s.proc.send_signal(signal.SIGHUP)
    s.proc.wait(timeout=60)
    assert s.proc.returncode == 0
    assert_engine_gone(s)


def test_serve_wires_the_slack_channel_and_says_so(serve) -> None:
    s = serve()
    slack = next(line for line in s.lines if "slack channel" in line)
    assert "ws://127.0.0.1:" in slack, s.lines
    assert s.record["slack"] is True and s.record["env"]["ANDES_SLACK_PORT"] == "0"

    def connected() -> bool:
        with urllib.request.urlopen(s.gateway_url() + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return "andes_gateway_slack_endpoints_connected 1.0" in text

    wait_until(connected, 20, "the gateway's slack reporter connecting")
    s.proc.send_signal(signal.SIGTERM)
    s.proc.communicate(timeout=60)


def test_vllm_options_after_double_dash_reach_the_engine(serve) -> None:
    s = serve("--tds", "6", "--", "--max-num-seqs", "3", "--served-model-name", "my-model",
              "--gpu-memory-utilization", "0.5")
    record = s.record
    assert record["rest"][-4:] == ["--max-num-seqs", "3", "--gpu-memory-utilization", "0.5"]
    # The served name is lifted into the launcher: given once, and the gateway knows it.
    assert record["argv"].count("--served-model-name") == 1
    assert record["argv"][record["argv"].index("--served-model-name") + 1] == "my-model"
    assert "(model my-model)" in "\n".join(s.lines)
    assert record["env"]["ANDES_DEFAULT_TDS"] == "6.0"  # --tds: gateway and scheduler alike
    with urllib.request.urlopen(s.gateway_url() + "/v1/models", timeout=5) as resp:
        assert [m["id"] for m in json.load(resp)["data"]] == ["my-model"]
    s.proc.send_signal(signal.SIGTERM)
    s.proc.communicate(timeout=60)


def _andes_serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(FAKE_VLLM), **(env or {})}
    return subprocess.run([sys.executable, "-m", "andes", "serve", "--model", "fake-model",
                           *args], capture_output=True, text=True, timeout=120, env=environ)


@pytest.mark.parametrize(("env", "needle"), [
    ({"ANDES_POLICY_OPTIONS": '{"bogus": 1}'},
     "ANDES_POLICY_OPTIONS: unknown option(s) 'bogus' for policy 'andes'"),
    ({"ANDES_POLICY_OPTIONS": "{not json"}, "ANDES_POLICY_OPTIONS is not valid JSON"),
    ({"ANDES_POLICY": "fcfs", "ANDES_POLICY_OPTIONS": '{"horizon_s": 1}'},
     "unknown option(s) 'horizon_s' for policy 'fcfs'"),
])
def test_bad_policy_options_fail_at_once_in_one_line(env: dict, needle: str) -> None:
    result = _andes_serve(env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert "starting" not in result.stdout  # nothing was started


def test_a_taken_port_fails_before_the_engine_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _andes_serve("--port", str(port))
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"andes serve: the gateway cannot listen on 127.0.0.1:{port}: Address already in "
            "use (another andes serve? choose another with --port)")
        assert "starting" not in result.stdout
        result = _andes_serve("--port", "0", "--engine-port", str(port))
        assert result.returncode == 2 and "the engine cannot listen" in result.stderr


def test_engine_owned_options_after_double_dash_are_refused() -> None:
    result = _andes_serve("--", "--port", "9000")
    assert result.returncode == 2
    assert "--port after '--'" in result.stderr and "--engine-port" in result.stderr


def test_config_file_json_logs_and_the_engine_log_on_the_console(serve, tmp_path: Path) -> None:
    config = tmp_path / "andes.toml"
    config.write_text('[gateway]\napi_keys = ["k-file"]\nttft_s = 2.5\n')
    s = serve("--config", str(config), "--log-format", "json", "--engine-log", "-")
    # --engine-log -: the engine's own output on this console, in order with serve's lines.
    assert any(line.startswith("fake vLLM: serving fake-model") for line in s.lines), s.lines
    url = s.gateway_url()
    request = urllib.request.Request(url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 401  # the file's api_keys
    request.add_header("Authorization", "Bearer k-file")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    s.proc.send_signal(signal.SIGTERM)
    _, err = s.proc.communicate(timeout=60)
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(entry.get("logger") == "andes.gateway" for entry in logs), err
