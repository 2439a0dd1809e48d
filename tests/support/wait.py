"""One bounded wait for tests: poll a condition until it holds, or fail saying what never happened.

The timeout is a safety bound, not a timed assertion: it only turns a hang into a failure with a
message (instead of pytest's 900 s timeout). Choose it generously; a slow machine only waits longer.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["until"]


async def until(condition: Callable[[], object | Awaitable[object]], what: str = "",
                timeout_s: float = 10.0, poll_s: float = 0.005) -> None:
    """Return once ``condition()`` (a function or a coroutine function) is truthy.

    Raises ``AssertionError`` naming ``what`` (default: the condition's source) after
    ``timeout_s`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() >= deadline:
            what = what or _source(condition)
            raise AssertionError(f"still not true after {timeout_s:g} s: {what}")
        await asyncio.sleep(poll_s)


def _source(condition: Callable[..., object]) -> str:
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)
