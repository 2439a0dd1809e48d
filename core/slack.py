"""Delivery slack: the one record type and the one definition both ends of the loop share.

**Slack** (``slack_s``) is how many seconds a reader can go on reading from what is buffered for
it (produced by the engine but not yet read, at the gateway or at the client) before it stalls:
``buffered_tokens / tds`` at the moment it was measured, less the time since. It is negative when
the reader has already been waiting that long, and unbounded (``inf``) while the reader is paused
(tab hidden: it reads nothing). Every ``slack_s`` in Andes means this (docs/architecture.md).

**Delivered** is what the gateway has *received from the engine* for the stream (the pacer's
``fed``), whether or not it has released it to the client yet: a token held back by server-side
pacing is buffered for the reader all the same. **Consumed** is what the reader has read: the
client's acknowledgements where it sends them, else the reading model's estimate.

A :class:`SlackRecord` is built by the gateway (``gateway.stream.Stream.slack_record``), carried by
the slack channel (:mod:`slack.wire`), re-dated on arrival to the receiver's clock
(:class:`slack.table.SlackTable`) and read by the policies as ``RequestView.slack``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_ID_CHARS", "SlackRecord", "slack_s"]

MAX_ID_CHARS = 256  # longest stream id a record may carry


def slack_s(buffered_tokens: float, tds_tok_s: float, paused: bool = False) -> float:
    """Seconds a reader at ``tds_tok_s`` can read from ``buffered_tokens`` (``inf`` if paused)."""
    if paused:
        return math.inf
    return max(buffered_tokens, 0.0) / tds_tok_s


@dataclass(frozen=True, slots=True)
class SlackRecord:
    """One stream's delivery at ``t_s``, measured where the reader is (validated on construction).

    ``t_s`` is on the clock of whoever holds the record: the gateway's wall clock when it is
    built, the receiver's once :class:`slack.table.SlackTable` has re-dated it.
    """

    stream_id: str  # the gateway's stream id (``andes_stream_id`` in the request's vllm_xargs)
    delivered: int  # tokens the gateway has received from the engine for this stream
    consumed: int  # tokens the reader has read so far (client acks, else the pacer's model)
    tds_tok_s: float  # the reader's current pace, tokens per second
    paused: bool  # the reader is not reading (tab hidden)
    t_s: float  # when it was measured (see the class docstring for the clock)

    def __post_init__(self) -> None:
        sid = self.stream_id
        if not isinstance(sid, str) or not 0 < len(sid) <= MAX_ID_CHARS:
            raise ValueError(f"'id' must be a string of 1..{MAX_ID_CHARS} characters, got {sid!r}")
        for name, value in (("delivered", self.delivered), ("consumed", self.consumed)):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name!r} must be an integer >= 0, got {value!r}")
        if self.consumed > self.delivered:
            raise ValueError(
                f"'consumed' ({self.consumed}) must not exceed 'delivered' ({self.delivered})"
            )
        if not _finite(self.tds_tok_s) or not self.tds_tok_s > 0:
            raise ValueError(f"'tds' must be a finite number > 0, got {self.tds_tok_s!r}")
        if type(self.paused) is not bool:
            raise ValueError(f"'paused' must be true or false, got {self.paused!r}")
        if not _finite(self.t_s):
            raise ValueError(f"'t' must be a finite number, got {self.t_s!r}")

    @property
    def buffered(self) -> int:
        """Tokens delivered but not yet read, at ``t_s``."""
        return self.delivered - self.consumed

    def slack_s(self, now_s: float) -> float:
        """Seconds until the reader stalls, aged from ``t_s`` to ``now_s`` (module docstring)."""
        return slack_s(self.buffered, self.tds_tok_s, self.paused) - max(now_s - self.t_s, 0.0)


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]
