"""The receiver's state: the latest report per stream, and flood control. Sans-I/O.

:class:`SlackTable` holds what :mod:`slack.receiver` decoded, re-dated to the receiver's clock
(:mod:`slack.wire` explains why a record is dated by its age at sending rather than by its own
timestamp); :class:`TokenBucket` limits each connection's frame rate. ``now`` is always passed in.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields

from core.slack import SlackRecord
from slack.wire import SlackBatch

__all__ = ["SlackCounters", "SlackTable", "TokenBucket"]


# -- flood control --------------------------------------------------------------------------------


class TokenBucket:
    """A token bucket: ``rate_per_s`` sustained, ``burst`` at once. ``now_s`` is passed in."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"rate_per_s must be a finite number > 0, got {rate_per_s!r}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._last_s: float | None = None

    def allow(self, now_s: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; say whether it did."""
        if self._last_s is not None and now_s > self._last_s:
            self._tokens = min(self.burst, self._tokens + (now_s - self._last_s) * self.rate_per_s)
        self._last_s = now_s if self._last_s is None else max(self._last_s, now_s)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False


# -- the receiver's table -------------------------------------------------------------------------


@dataclass(slots=True)
class SlackCounters:
    """What the receiver has seen. Every dropped frame or record is counted under one reason."""

    connections: int = 0  # connections accepted
    frames: int = 0  # slack frames accepted (decoded and applied)
    records: int = 0  # records stored
    unknown: int = 0  # records for a stream id the engine does not have
    superseded: int = 0  # records older than the one already stored for the id (reordering)
    evicted: int = 0  # entries evicted to bound the table
    malformed: int = 0  # frames rejected by the decoder (includes text frames)
    oversized: int = 0  # frames over the size limit
    flooded: int = 0  # frames dropped by the per-connection rate limit
    unauthenticated: int = 0  # frames / connections that failed authentication
    idle: int = 0  # connections closed for sending nothing within idle_timeout_s
    refused_connections: int = 0  # connections refused: no slot, or too many from one address
    evicted_connections: int = 0  # unproven connections closed to make room for a new one

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SlackTable:
    """The latest report per stream id, dated on the receiver's clock. Sans-I/O, not thread-safe.

    Size is bounded by ``max_entries``: the least recently updated entry goes first. With
    ``require_known`` only ids announced by :meth:`register` (the engine's live requests) are
    stored; reports for any other id are dropped and counted as ``unknown`` — a gateway (or a
    peer pretending to be one) cannot fill the engine's memory with made-up streams, and
    :meth:`unregister` (the request finished) frees the entry at once.
    """

    def __init__(self, max_entries: int = 65536, require_known: bool = False) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self.require_known = require_known
        self.counters = SlackCounters()
        self._reports: OrderedDict[str, SlackRecord] = OrderedDict()
        self._known: set[str] = set()

    def __len__(self) -> int:
        return len(self._reports)

    def register(self, stream_id: str) -> None:
        """The engine has a request for ``stream_id``: accept reports for it."""
        self._known.add(stream_id)

    def unregister(self, stream_id: str) -> None:
        """The request for ``stream_id`` is gone: forget it and its report."""
        self._known.discard(stream_id)
        self._reports.pop(stream_id, None)

    def apply(self, batch: SlackBatch, received_s: float) -> int:
        """Store ``batch``'s records, received at ``received_s`` (receiver's clock); count stored.

        Each record is dated ``received_s - (batch.sent_s - record.t_s)``: its age at sending, on
        the gateway's clock, carried over to the receiver's (see the module docstring).
        """
        stored = 0
        counters = self.counters
        reports = self._reports
        for record in batch.records:
            sid = record.stream_id
            if self.require_known and sid not in self._known:
                counters.unknown += 1
                continue
            t_s = received_s - max(batch.sent_s - record.t_s, 0.0)
            old = reports.get(sid)
            if old is not None and old.t_s > t_s:
                counters.superseded += 1
                continue
            reports[sid] = dataclasses.replace(record, t_s=t_s)
            reports.move_to_end(sid)
            stored += 1
        while len(reports) > self.max_entries:
            reports.popitem(last=False)
            counters.evicted += 1
        counters.frames += 1
        counters.records += stored
        return stored

    def fresh(self, stream_id: str, now_s: float, stale_after_s: float) -> SlackRecord | None:
        """The latest report for ``stream_id`` if it is at most ``stale_after_s`` old, else None."""
        report = self._reports.get(stream_id)
        if report is None or now_s - report.t_s > stale_after_s:
            return None
        return report

    def fresh_many(
        self, stream_ids: Sequence[str], now_s: float, stale_after_s: float
    ) -> dict[str, SlackRecord]:
        """:meth:`fresh` for many ids at once (one lock acquisition for a locked wrapper)."""
        out = {}
        reports = self._reports
        for sid in stream_ids:
            report = reports.get(sid)
            if report is not None and now_s - report.t_s <= stale_after_s:
                out[sid] = report
        return out
