"""The pacer: releases a stream's text at its reader's pace. Sans-I/O.

One pacer per stream, shared by every transport (SSE, WebSocket, the Python client; the JS client
mirrors it in ``client_js/src/pacer.js`` against the same golden vectors). It never sleeps and never
reads a clock: the caller passes ``now_s`` (seconds, any monotonic clock) to every method whose
effect depends on the time, feeds the engine's tokens as they arrive, and asks :meth:`Pacer.due`
for what to send, then sleeps until :meth:`Pacer.next_due_s`.

The reading model is the QoE model's (core/qoe.py): token *i* is read at
``c_i = max(arrival_i, c_{i-1} + 1/tds)``. In ``server`` mode the pacer releases token *i* no later
than ``c_i`` — up to one display frame early, so text is coalesced into at most one write per frame
(``frame_s``, default 50 ms = 20 Hz) instead of one write per token, and is never late because of
the coalescing. With ``word_boundary`` it also releases, early, the rest of a word already received,
so a frame does not end mid-word. In ``client`` and ``off`` modes text is released as soon as it
arrives (the client paces), while the same reading model estimates how much the reader has consumed
until the client's acknowledgements say so.

End of stream: after :meth:`close`, buffered text keeps its pace (``end="pace"``, the default: the
reader sees no burst at the end) or is released at once (``end="flush"``). :attr:`done` is true once
the stream is closed and everything fed has been released.

Memory: at most ``max_buffered_tokens`` tokens, and at most ``max_buffered_bytes`` bytes of their
UTF-8 text, may wait unreleased; :meth:`feed` raises :class:`PacerOverflow` beyond (the gateway
ends such a stream: its reader is too slow or absent). Both bounds matter: a token is usually a few
bytes, but nothing stops an engine from sending a long one, and in ``client``/``off`` mode
everything waiting goes out as one chunk, so the byte bound is also the largest chunk.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from core.slack import slack_s

__all__ = ["Chunk", "Pacer", "PacerConfig", "PacerOverflow", "PacingMode"]

PacingMode = Literal["server", "client", "off"]
_MODES = ("server", "client", "off")
_ENDS = ("pace", "flush")


class PacerOverflow(Exception):
    """More unreleased tokens than ``max_buffered_tokens``."""


@dataclass(frozen=True, slots=True)
class PacerConfig:
    """How a stream is paced. Validated once; errors quote the bad value."""

    tds_tok_s: float = 4.8  # the reader's pace, tokens per second
    mode: PacingMode = "server"  # who paces: the gateway, the client, or nobody
    frame_s: float = 0.05  # coalesce releases to at most one per frame (display rate 1/frame_s)
    word_boundary: bool = True  # release the rest of a received word early rather than split it
    max_word_lookahead: int = 8  # most tokens pulled forward to finish a word
    end: Literal["pace", "flush"] = "pace"  # after close(): keep the pace, or release all at once
    max_buffered_tokens: int = 65536  # most tokens waiting unreleased
    max_buffered_bytes: int = 1 << 20  # most UTF-8 bytes of text waiting unreleased

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tds_tok_s) and self.tds_tok_s > 0):
            raise ValueError(f"tds_tok_s must be a finite number > 0, got {self.tds_tok_s!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if not (math.isfinite(self.frame_s) and 0 <= self.frame_s <= 1):
            raise ValueError(f"frame_s must be within [0, 1] seconds, got {self.frame_s!r}")
        if self.max_word_lookahead < 0:
            raise ValueError(f"max_word_lookahead must be >= 0, got {self.max_word_lookahead!r}")
        if self.end not in _ENDS:
            raise ValueError(f"end must be one of {_ENDS}, got {self.end!r}")
        if self.max_buffered_tokens < 1:
            raise ValueError(f"max_buffered_tokens must be >= 1, got {self.max_buffered_tokens!r}")
        if self.max_buffered_bytes < 1:
            raise ValueError(f"max_buffered_bytes must be >= 1, got {self.max_buffered_bytes!r}")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Text to send now: ``count`` tokens starting at token ``index``."""

    text: str
    index: int  # index (0-based) of the first token in the chunk
    count: int  # tokens in the chunk
    due_s: float  # when its first token was due to the reader (lateness = send time - due_s)


class Pacer:
    """Paces one stream. See the module docstring for the model."""

    def __init__(self, config: PacerConfig | None = None) -> None:
        self.config = config or PacerConfig()
        self._tds = self.config.tds_tok_s
        self._pending: deque[str] = deque()  # fed, not yet sent
        self._pending_bytes = 0  # UTF-8 bytes of _pending
        self._fed = 0  # tokens fed
        self._sent = 0  # tokens released to the transport
        self._read = 0.0  # tokens the reading model says are read (server mode: == sent)
        self._next_s = -math.inf  # when the reader needs the next unread token
        self._last_emit_s = -math.inf
        self._acked: int | None = None  # the client's latest acknowledgement, if any
        self._closed = False
        self._paused = False

    # -- inputs ---------------------------------------------------------------------------------

    def feed(self, pieces: Iterable[str], now_s: float) -> None:
        """Add tokens (text pieces, one per token) that arrived from the engine at ``now_s``."""
        if self._closed:
            raise ValueError("feed() after close()")
        pieces = list(pieces)
        if not pieces:
            return
        if len(self._pending) + len(pieces) > self.config.max_buffered_tokens:
            raise PacerOverflow(
                f"{len(self._pending) + len(pieces)} unreleased tokens exceed "
                f"max_buffered_tokens={self.config.max_buffered_tokens}"
            )
        size = self._pending_bytes + sum(map(_utf8_len, pieces))
        if size > self.config.max_buffered_bytes:
            raise PacerOverflow(f"{size} unreleased bytes exceed "
                                f"max_buffered_bytes={self.config.max_buffered_bytes}")
        self._pending_bytes = size
        self._catch_up_model(now_s)
        if self._read >= self._fed and self._next_s < now_s:
            # The reader had caught up and was waiting: the new token is needed right now.
            self._next_s = now_s
        self._pending.extend(pieces)
        self._fed += len(pieces)

    def close(self) -> None:
        """The engine finished the stream; no more :meth:`feed`."""
        self._closed = True

    def set_pace(self, tds_tok_s: float, now_s: float) -> None:
        """Change the reader's pace from ``now_s`` on."""
        if not (math.isfinite(tds_tok_s) and tds_tok_s > 0):
            raise ValueError(f"tds must be a finite number > 0, got {tds_tok_s!r}")
        self._catch_up_model(now_s)
        # Time left until the next token is due scales with the pace change.
        if self._next_s > now_s:
            self._next_s = now_s + (self._next_s - now_s) * self._tds / tds_tok_s
        self._tds = tds_tok_s

    def pause(self, now_s: float) -> None:
        """The reader stopped reading (page hidden): release nothing until :meth:`resume`."""
        self._catch_up_model(now_s)
        self._paused = True

    def resume(self, now_s: float) -> None:
        """The reader is back: continue from where they stopped."""
        if self._paused:
            self._paused = False
            self._next_s = max(self._next_s, now_s)

    def ack(self, consumed: int) -> None:
        """The client has shown ``consumed`` tokens (client pacing). Never moves backwards."""
        if consumed < 0 or consumed > self._sent:
            raise ValueError(f"ack of {consumed} tokens, but {self._sent} were sent")
        self._acked = max(self._acked or 0, consumed)

    # -- outputs --------------------------------------------------------------------------------

    def due(self, now_s: float) -> list[Chunk]:
        """Text to send at ``now_s``: at most one coalesced chunk."""
        if self.config.mode != "server":
            self._catch_up_model(now_s)
            return self._release(len(self._pending), now_s, due_s=now_s)
        if self._paused or not self._pending:
            return []
        if self._closed and self.config.end == "flush":
            return self._release(len(self._pending), now_s, due_s=max(self._next_s, now_s))
        if now_s < self._last_emit_s + self.config.frame_s and now_s + 1e-9 < self._next_s:
            return []
        horizon = now_s + self.config.frame_s
        # The epsilon keeps ``due(next_due_s())`` from coming back empty when
        # ``(next - frame) + frame`` rounds below ``next`` (a caller would spin).
        if horizon + 1e-9 < self._next_s:
            return []
        count = min(len(self._pending), int((horizon - self._next_s) * self._tds + 1e-9) + 1)
        count = self._extend_to_word(count)
        due_s = self._next_s
        self._next_s += count / self._tds
        self._read = self._sent + count
        return self._release(count, now_s, due_s=due_s)

    def release_until(self, index: int, now_s: float) -> list[Chunk]:
        """Release every token before token ``index`` now, whatever its due time.

        For what must not wait behind paced text and must not overtake it either: a tool-call or
        reasoning delta that arrived after token ``index - 1`` goes out right after the text fed
        before it (as smoothing libraries flush their buffer at a non-text part). The reader's
        pace resumes from ``now_s`` for the text after it. Not mirrored in client_js (its
        protocol carries text only).
        """
        count = min(index - self._sent, len(self._pending))
        if count <= 0:
            return []
        chunks = self._release(count, now_s, due_s=now_s)
        if self.config.mode == "server":  # else the reading model goes on estimating
            self._read = max(self._read, float(self._sent))
            self._next_s = max(self._next_s, now_s)
        return chunks

    def next_due_s(self) -> float | None:
        """When :meth:`due` next has something to release; ``None`` until more is fed or resumed."""
        if not self._pending or (self._paused and self.config.mode == "server"):
            return None
        if self.config.mode != "server" or (self._closed and self.config.end == "flush"):
            return -math.inf
        return max(self._next_s - self.config.frame_s, self._last_emit_s + self.config.frame_s)

    # -- state ----------------------------------------------------------------------------------

    @property
    def tds_tok_s(self) -> float:
        return self._tds

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def done(self) -> bool:
        """Closed and everything fed has been released."""
        return self._closed and not self._pending

    @property
    def fed(self) -> int:
        """Tokens received from the engine."""
        return self._fed

    @property
    def sent(self) -> int:
        """Tokens released to the transport."""
        return self._sent

    def consumed(self, now_s: float) -> int:
        """Tokens the reader has read: the client's acknowledgement if it sends them, else the
        reading model's estimate."""
        if self._acked is not None:
            return self._acked
        if self.config.mode == "server":
            return self._sent
        self._catch_up_model(now_s)
        return int(self._read)

    def buffered(self, now_s: float) -> int:
        """Tokens received but not yet read (at the gateway or the client)."""
        return self._fed - self.consumed(now_s)

    def slack_s(self, now_s: float) -> float:
        """Seconds the reader can go on from what is buffered (:func:`core.slack.slack_s`)."""
        return slack_s(self.buffered(now_s), self._tds, self._paused)

    # -- internals ------------------------------------------------------------------------------

    def _catch_up_model(self, now_s: float) -> None:
        """Advance the reading model to ``now_s`` (client/off modes, where nothing is held back)."""
        if self.config.mode == "server" or self._paused:
            return
        unread = self._fed - self._read
        if unread <= 0 or now_s < self._next_s:
            return
        reads = min(unread, math.floor((now_s - self._next_s) * self._tds) + 1)
        self._read += reads
        self._next_s += reads / self._tds

    def _extend_to_word(self, count: int) -> int:
        if not self.config.word_boundary:
            return count
        limit = min(len(self._pending), count + self.config.max_word_lookahead)
        while count < limit:
            prev, nxt = self._pending[count - 1], self._pending[count]
            if not prev or prev[-1].isspace() or not nxt or nxt[0].isspace():
                break
            count += 1
        return count

    def _release(self, count: int, now_s: float, due_s: float) -> list[Chunk]:
        if count <= 0:
            return []
        pending = self._pending
        if count == 1:  # the common case of a paced stream: one token per write
            text = pending.popleft()
        else:
            text = "".join([pending.popleft() for _ in range(count)])
        self._pending_bytes -= _utf8_len(text)
        chunk = Chunk(text=text, index=self._sent, count=count, due_s=due_s)
        self._sent += count
        self._last_emit_s = now_s
        return [chunk]


def _utf8_len(text: str) -> int:
    # Most engine text is ASCII: its length is its size, without encoding it. surrogatepass: a
    # lone surrogate (a broken engine) still has a size, it is not an error here.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
