"""The shared clock of the sleeping writers (gateway/stream.py ``_Clock``): streams that re-arm
from inside its callback — the direct-write path does, every paced write — leave one timer
armed, not one each (each extra timer kept a chain of callbacks alive: CPU grew with every
level of the scale benchmark)."""

from __future__ import annotations

import asyncio

from gateway.stream import _Clock


class _Rearming:
    """A stream stand-in that asks to be woken again ``step_s`` after each wake, ``n`` times."""

    def __init__(self, clock: _Clock, step_s: float, n: int) -> None:
        self.clock, self.step_s, self.left = clock, step_s, n

    def _on_clock(self, deadline_s: float) -> None:
        self.left -= 1
        if self.left > 0:
            self.clock.wake_at(deadline_s + self.step_s, self)  # type: ignore[arg-type]


def _armed(loop: asyncio.AbstractEventLoop, clock: _Clock) -> int:
    """Timers of this loop that would call ``clock._fire`` (the default loop's own list)."""
    return sum(1 for h in loop._scheduled  # type: ignore[attr-defined]
               if not h.cancelled() and getattr(h._callback, "__self__", None) is clock)


async def test_streams_rearming_from_the_callback_leave_one_timer() -> None:
    loop = asyncio.get_running_loop()
    clock = _Clock(loop)
    streams = [_Rearming(clock, 0.002 + i * 1e-5, 20) for i in range(50)]
    for s in streams:
        clock.wake_at(loop.time(), s)  # type: ignore[arg-type]
    for _ in range(2000):  # a safety bound
        if all(s.left == 0 for s in streams):
            break
        assert _armed(loop, clock) <= 1
        await asyncio.sleep(0.001)
    assert all(s.left == 0 for s in streams)
    assert _armed(loop, clock) == 0
