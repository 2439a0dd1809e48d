"""The engine's guard (engine/vllm/guard.py) with real processes: it ends the whole group when
asked, when orphaned and when its command exits by itself — SIGKILL for what ignores SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.vllm.guard import group_members

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl")

REPO = Path(__file__).resolve().parents[3]

# The "engine": writes its pid and its child's, then waits; the child ignores SIGTERM, as a
# wedged engine core might.
ENGINE = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
code = int(sys.argv[2]) if len(sys.argv) > 2 else None
if code is not None:
    time.sleep(0.5)
    os._exit(code)  # a crash: the child is left behind
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def until(predicate: Callable[[], object], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.05)


def start_guard(tmp_path: Path, *engine_args: str,
                parent: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
    pids = tmp_path / "pids"
    guard = [sys.executable, "-m", "engine.vllm.guard", "--grace-s", "1", "--",
             sys.executable, "-c", ENGINE, str(pids), *engine_args]
    if parent:  # a parent process of its own, which the test can kill outright
        cmd = [sys.executable, "-c",
               "import subprocess, sys, time; subprocess.Popen(sys.argv[1:], "
               "stdin=subprocess.PIPE, start_new_session=True); time.sleep(600)", *guard]
        proc = subprocess.Popen(cmd, cwd=REPO)
    else:
        proc = subprocess.Popen(guard, cwd=REPO, stdin=subprocess.PIPE, start_new_session=True)
    until(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    return proc, pids


def engine_pids(pids: Path) -> list[int]:
    return [int(p) for p in pids.read_text().split()]


def test_sigterm_ends_the_group_and_kills_what_ignores_it(tmp_path: Path) -> None:
    proc, pids = start_guard(tmp_path)
    engine, child = engine_pids(pids)
    assert set(group_members(proc.pid)) >= {proc.pid, engine, child}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # the engine's status: killed by TERM
    until(lambda: not alive(engine) and not alive(child))


def test_orphaned_guard_ends_the_group(tmp_path: Path) -> None:
    parent, pids = start_guard(tmp_path, parent=True)
    engine, child = engine_pids(pids)
    parent.kill()  # SIGKILL: nothing of the parent runs; the guard learns it from the kernel
    parent.wait(timeout=10)
    until(lambda: not alive(engine) and not alive(child))


def test_closed_pipe_alone_ends_the_group(tmp_path: Path) -> None:
    # Where no parent-death signal exists, the end of the parent's pipe says the same.
    proc, pids = start_guard(tmp_path)
    engine, child = engine_pids(pids)
    assert proc.stdin is not None
    proc.stdin.close()
    until(lambda: not alive(engine) and not alive(child))
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM


def test_a_crashed_engine_leaves_nothing_and_its_status_is_kept(tmp_path: Path) -> None:
    proc, pids = start_guard(tmp_path, "3")
    engine, child = engine_pids(pids)
    assert proc.wait(timeout=30) == 3
    assert not alive(engine) and not alive(child)


def test_guard_without_a_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "engine.vllm.guard"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env=os.environ)
    assert result.returncode == 2 and "no command to run" in result.stderr
