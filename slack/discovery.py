"""Where an engine's slack endpoint is advertised, and how a gateway finds it.

An engine core's slack server (:mod:`slack.receiver`) writes a small JSON file when it
listens, rewrites it about once a second with its counters, and removes it when it stops::

    <dir>/engine-<http port>-dp<rank>.json
    {"url": "ws://127.0.0.1:8100", "pid": 1234, "http_port": 8000, "dp_rank": 0,
     "updated": <unix time>, "counters": {"frames": ..., "records": ..., ...}}

``<dir>`` is ``$ANDES_SLACK_DIR``, else ``$XDG_CACHE_HOME/andes/slack``, else
``~/.cache/andes/slack``. The key is the engine's *HTTP* port because that is what a gateway is
configured with (its upstream URL); the slack port itself may be ephemeral (port 0) and with data
parallelism there is one engine core — one slack server, on base port + rank — per rank, each with
its own file. A gateway whose upstream is on this host reads every ``engine-<port>-dp*.json``
whose process is alive and reports to all of them (each core stores the streams it serves and
counts the others as unknown). Across hosts, give the gateway ``--slack-url`` instead.

Why a file rather than an HTTP route on the engine: vLLM's API server runs in another process than
the engine core that owns the scheduler, and a plug-in cannot add routes to it; the file needs no
cooperation from vLLM and also carries the counters, so tests and operators can see what arrived.

That an engine runs the Andes scheduler at all is said on every HTTP response of ``andes
engine``: the header :data:`SCHEDULER_HEADER` (vLLM's ``--middleware``,
:mod:`engine.vllm.advert`), which a gateway on any host sees on its ``GET /v1/models``, with or
without the slack channel — so it leaves scheduling to the engine instead of doing it twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SCHEDULER_HEADER", "advert_path", "discover", "read_adverts", "remove_advert",
           "slack_dir", "write_advert"]

# On every HTTP response of an engine that runs the Andes scheduler (the value: "andes").
SCHEDULER_HEADER = "X-Andes-Scheduler"

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def slack_dir(env: dict[str, str] | None = None) -> Path:
    """The directory holding the adverts (see the module docstring)."""
    env = dict(os.environ) if env is None else env
    if env.get("ANDES_SLACK_DIR"):
        return Path(env["ANDES_SLACK_DIR"])
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "andes" / "slack"


def advert_path(http_port: int, dp_rank: int = 0, directory: Path | None = None) -> Path:
    return (directory or slack_dir()) / f"engine-{http_port}-dp{dp_rank}.json"


def write_advert(path: Path, advert: dict[str, Any]) -> None:
    """Write ``advert`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".advert-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({**advert, "updated": time.time()}, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_advert(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_adverts(http_port: int, directory: Path | None = None) -> list[dict[str, Any]]:
    """The live adverts of the engine serving HTTP on ``http_port`` on this host, by rank."""
    found = []
    for path in sorted((directory or slack_dir()).glob(f"engine-{http_port}-dp*.json")):
        try:
            advert = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # vanished or foreign: not ours to judge
        if isinstance(advert, dict) and isinstance(advert.get("url"), str) and _alive(
            advert.get("pid")
        ):
            found.append(advert)
    found.sort(key=lambda a: a.get("dp_rank", 0))
    return found


def discover(upstream_url: str, directory: Path | None = None) -> list[str]:
    """Slack endpoint URLs of the engine behind ``upstream_url`` (e.g. ``http://127.0.0.1:8000``).

    Empty when the upstream is not on this host or advertises no slack endpoint (stock vLLM).
    """
    parts = urlsplit(upstream_url)
    if parts.hostname not in _LOCAL_HOSTS and parts.hostname != os.uname().nodename:
        return []
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [a["url"] for a in read_adverts(port, directory)]
