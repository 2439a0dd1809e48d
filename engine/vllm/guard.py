"""The engine's guard: ends vLLM's whole process tree when whoever started it goes away.

    python -m engine.vllm.guard [--grace-s S] -- COMMAND...

:class:`~engine.vllm.launch.EngineProcess` starts the engine through this small process instead of
directly. The guard leads a process group of its own (a new session), runs ``COMMAND`` (vLLM's
OpenAI server) in that group — vLLM's engine core and workers are spawned into it too — and waits.
It ends the group when

* its parent dies, however it dies (``SIGKILL`` included, where a parent's ``finally`` never
  runs): Linux tells it with a parent-death signal (``prctl(PR_SET_PDEATHSIG)``), and everywhere
  its stdin — a pipe whose other end only the parent holds — reads end-of-file;
* it is asked to (``SIGTERM``, ``SIGINT``, ``SIGHUP``): ``EngineProcess.stop`` signals the guard,
  and the guard alone signals the group (once: a second ``SIGINT`` would make vLLM's server skip
  its own clean-up);
* ``COMMAND`` exits by itself (a crash): what it spawned must not outlive it.

"Ends" means ``SIGTERM`` to the group, ``--grace-s`` seconds for vLLM to shut down cleanly, then
``SIGKILL`` to whatever is left of the group. The guard exits with ``COMMAND``'s status (``128 +
signal`` if a signal ended it).

Why a separate process rather than ``preexec_fn`` in the parent: a parent-death signal set on the
vLLM server reaches that one process only, and vLLM's engine core (a grandchild) may outlive a
server killed abruptly; the guard outlives both and owns the group. Why not threads in the
parent: they die with it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["group_members", "main"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PARENT_GONE = signal.SIGUSR1  # our parent-death signal: distinct from the stop requests
_STOP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _set_parent_death_signal(sig: signal.Signals) -> bool:
    """Ask Linux to send ``sig`` when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (from ``/proc``; Linux)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def _kill_others(pgid: int, sig: signal.Signals) -> None:
    """``sig`` to every process of the group but this one (``killpg`` would hit us too)."""
    me = os.getpid()
    try:
        pids = group_members(pgid)
    except OSError:  # no /proc: the group, ourselves included, as a last resort
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
        return
    for pid in pids:
        if pid != me:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)


class _Guard:
    def __init__(self, command: Sequence[str], grace_s: float) -> None:
        self.command = list(command)
        self.grace_s = grace_s
        self.parent = os.getppid()
        self.stop_requested = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in _STOP:
            self.stop_requested = True
        # _PARENT_GONE is judged by parent_gone(): a thread of the parent that ends sends it too.

    def parent_gone(self) -> bool:
        return os.getppid() != self.parent

    def run(self) -> int:
        if os.getpgrp() != os.getpid():
            os.setsid()  # never signal the group of whoever started us
        pgid = os.getpgrp()
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (*_STOP, _PARENT_GONE, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        _set_parent_death_signal(_PARENT_GONE)
        child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        self._wait(child)
        # Asked to stop, or orphaned: the whole group gets the grace (vLLM's engine core and
        # workers included); vLLM ended by itself: what it left behind gets a moment.
        grace_s = self.grace_s if child.poll() is None else min(self.grace_s, 5.0)
        _kill_others(pgid, signal.SIGTERM)
        _wait_group_empty(pgid, grace_s)
        _kill_others(pgid, signal.SIGKILL)
        code = child.wait()
        return code if code >= 0 else 128 - code

    def _wait(self, child: subprocess.Popen[bytes]) -> None:
        """Until the child exits, a stop is asked for, or the parent is gone."""
        watch = [self.wake_r]
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(0).st_mode):
                watch.append(0)  # our stdin, the parent's pipe: end-of-file once it is gone
        while child.poll() is None and not self.stop_requested and not self.parent_gone():
            # The timeout is a safety net (a parent-death signal lost to an exiting thread).
            ready, _, _ = select.select(watch, [], [], 1.0)
            if 0 in ready and not os.read(0, 4096):
                return
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 4096)


def _wait_group_empty(pgid: int, timeout_s: float) -> None:
    """Until the group holds only this process (its members have exited), at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    me = os.getpid()
    while time.monotonic() < deadline:
        try:
            if not [p for p in group_members(pgid) if p != me]:
                return
        except OSError:
            return
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.vllm.guard",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--grace-s", type=float, default=20.0,
                        help="seconds between SIGTERM and SIGKILL (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after '--': what to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run (give it after '--')")
    return _Guard(command, args.grace_s).run()


if __name__ == "__main__":
    sys.exit(main())
