"""The readers of :mod:`bench.readers` as the simulator's client model: measured slack.

:mod:`engine.sim.simulator` asks its ``slack_fn(view, now_s)`` hook, before every policy call, for
each live request's latest :class:`~core.slack.SlackRecord`. :class:`ReaderSlack` answers
what the gateway would report if the request were read by its :class:`~bench.readers.Reader`
over the WebSocket (``bench/ws_client.py``):

* ``delivered`` — the tokens generated so far (the simulator delivers each at the end of its
  iteration, so a token produced is a token at the client);
* ``consumed`` — the tokens the reader has read by now, by the QoE model's reading rule on the
  reader's clock at the reader's own pace: token *i* is read at
  ``c_i = max(τ(d_i), c_{i-1} + 1/tds_actual)``, where ``τ`` stops while the tab is hidden;
* ``tds_tok_s`` — the reader's actual pace (the client sends it as a ``pace`` frame);
* ``paused`` — while the tab is hidden (``pause_after_s`` after the first token, for ``pause_s``).

Reports are refreshed every ``interval_s`` (the gateway reporter's default, 75 ms) and the same
report object is returned in between, as the engine holds the last one it received and the policy
ages it. Not modelled: the client's ack coalescing (up to 150 ms behind what was shown) and network
delay. A request without a reader gets no report (the policy infers, as without the channel).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

from bench.readers import Interval, Reader, reader_clock_s
from core.slack import SlackRecord
from engine.policy.base import RequestView

__all__ = ["ReaderSlack"]


class _ReadState:
    """One reader's progress, advanced incrementally (O(1) amortized per call)."""

    __slots__ = ("delivered", "gap_s", "last_read_s", "pauses", "pending", "read", "reader",
                 "report")  # fmt: skip

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.gap_s = 1.0 / reader.read_tds_tok_s
        self.delivered = 0  # tokens arrived
        self.pauses: list[Interval] = []  # known once the first token has arrived
        self.pending: deque[list[float]] = deque()  # unread batches: [reader-clock arrival, count]
        self.read = 0  # tokens read
        self.last_read_s = -math.inf  # reader-clock read time of the last read token
        self.report: SlackRecord | None = None

    def deliver(self, total: int, rel_s: float) -> None:
        """``total`` tokens have arrived by ``rel_s`` (seconds since the request arrived)."""
        new = total - self.delivered
        if new <= 0:
            return
        if self.delivered == 0:
            interval = self.reader.pause_interval(rel_s)
            self.pauses = [interval] if interval is not None else []
        self.pending.append([reader_clock_s(rel_s, self.pauses), float(new)])
        self.delivered = total

    def consumed(self, rel_s: float) -> int:
        """Tokens read by ``rel_s``."""
        now = reader_clock_s(rel_s, self.pauses)
        gap = self.gap_s
        while self.pending:
            batch = self.pending[0]
            start = max(batch[0], self.last_read_s + gap)
            if start > now:
                break
            k = int(batch[1])
            m = min(k, math.floor((now - start) / gap + 1e-9) + 1)
            self.read += m
            self.last_read_s = start + (m - 1) * gap
            if m < k:
                batch[1] = k - m
                break
            self.pending.popleft()
        return self.read

    def hidden(self, rel_s: float) -> bool:
        return any(a <= rel_s < b for a, b in self.pauses)


class ReaderSlack:
    """``slack_fn`` for :class:`engine.sim.simulator.Simulator`: reports of readers' slack."""

    def __init__(self, readers: Mapping[str, Reader], interval_s: float = 0.075) -> None:
        if not (math.isfinite(interval_s) and interval_s >= 0):
            raise ValueError(f"interval_s must be a finite number >= 0, got {interval_s!r}")
        self.readers = readers
        self.interval_s = interval_s
        self._states: dict[str, _ReadState] = {}

    def __call__(self, view: RequestView, now_s: float) -> SlackRecord | None:
        state = self._states.get(view.req_id)
        if state is None:
            reader = self.readers.get(view.req_id)
            if reader is None:
                return None
            state = self._states[view.req_id] = _ReadState(reader)
        rel = now_s - view.arrival_s
        state.deliver(view.output_tokens, rel)
        last = state.report
        if last is not None and now_s - last.t_s < self.interval_s:
            return last
        report = SlackRecord(
            stream_id=view.req_id, delivered=state.delivered, consumed=state.consumed(rel),
            tds_tok_s=state.reader.read_tds_tok_s, paused=state.hidden(rel), t_s=now_s,
        )  # fmt: skip
        state.report = report
        return report
