"""Write a benchmark's results into its own section of BENCHMARKS.md.

Each benchmark owns one section, delimited by HTML comments, and replaces it on every run, so
several benchmarks can record into one file without touching each other's numbers::

    from benchmarks.record import record, machine_line
    record("policy-decision-time", markdown_text)
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
_HEADER = (
    "# Benchmarks\n\n"
    "Every number here was written by the command shown in its section, on the machine named\n"
    "there. "
    "Targets are stated beside the measurement; a miss is reported as measured.\n"
)


def machine_line() -> str:
    """One line describing where and when this ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    today = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{today}; {os.cpu_count()} cores, {cpu}; Python {platform.python_version()}"


def command_line() -> str:
    """The command that is running, as a user would type it."""
    argv = [Path(sys.argv[0]).name if sys.argv[0].endswith("andes") else sys.argv[0], *sys.argv[1:]]
    if argv[0].endswith(".py"):
        argv = ["python", *argv]
    return " ".join(shlex.quote(a) for a in argv)


def record(section: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) ``section`` of BENCHMARKS.md with ``body``."""
    begin, end = f"<!-- begin {section} -->", f"<!-- end {section} -->"
    text = path.read_text() if path.exists() else _HEADER
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
