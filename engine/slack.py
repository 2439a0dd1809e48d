"""The slack side channel's wire format and its receiver-side state. Sans-I/O.

The gateway measures each live stream's delivery (tokens it received from the engine, tokens its
reader consumed, the reader's pace, paused or not) and sends batches of these records to the
engine's scheduler every 50–100 ms over a WebSocket (:mod:`gateway.reporter` sends,
:mod:`engine.vllm.slack_server` receives). This module is the one definition of that wire format
both ends use, plus the receiver's table of latest reports. It imports no asyncio, no websockets,
no vLLM: bytes in, records out, ``now`` passed in.

Frames (one msgpack map per WebSocket binary message, ``v`` = :data:`VERSION`)::

    server -> gateway  {"type": "challenge", "v": 1, "nonce": <16 bytes>}   (secret set only)
    gateway -> server  {"type": "hello", "v": 1, "mac": <32 bytes>}         (HMAC-SHA256 of nonce)
    gateway -> server  {"type": "slack", "v": 1, "sent": <float>, "records": [<record>, ...]}
    record             {"id": str, "delivered": int, "consumed": int, "tds": float,
                        "paused": bool, "t": float}

Authentication (optional): with a shared secret the server opens every connection with a fresh
random nonce, and the first frame the gateway sends must be a ``hello`` carrying
``HMAC-SHA256(secret, nonce)``, compared in constant time. The secret never crosses the wire and a
recorded ``hello`` cannot be replayed on another connection. Frames are not encrypted: on anything
but loopback, run the channel inside a trusted network or a TLS tunnel.

Clocks: ``t`` (when the record was measured) and ``sent`` (when the frame left) are the gateway's
wall-clock seconds. The receiver never compares them with its own clock — gateway and engine may be
different hosts with skewed clocks. It stamps the frame with its own receive time and dates each
record ``sent - t`` seconds before that (a difference of two readings of one clock: skew-free). So a
batch that waited in the gateway's queue during a reconnect arrives already aged, and only the
network transit (sub-millisecond on loopback, a few ms on a LAN) is counted as fresh. Staleness is
then ``receiver_now - that date``.

Validation is strict: a frame with any invalid record is rejected whole, with an error naming the
record and the field (a correct sender never produces one — :class:`SlackRecord` validates on
construction — so a bad frame means a bug or an attacker, and partial trust buys nothing).
Unknown keys in a record or frame are ignored, so a newer gateway can add fields.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import msgpack

from engine.policy.base import SlackReport

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_RECORDS",
    "MAX_ID_CHARS",
    "NONCE_BYTES",
    "VERSION",
    "SlackAuthError",
    "SlackBatch",
    "SlackCounters",
    "SlackFrameError",
    "SlackFrameTooLarge",
    "SlackRecord",
    "SlackTable",
    "TokenBucket",
    "decode_batch",
    "decode_challenge",
    "decode_frame_type",
    "decode_hello",
    "encode_batch",
    "encode_challenge",
    "encode_hello",
    "hello_mac",
    "verify_hello",
]

VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 1 << 20  # 1 MiB: ~20k records of ~50 bytes
DEFAULT_MAX_RECORDS = 16384  # records in one frame
MAX_ID_CHARS = 256  # longest stream id accepted
NONCE_BYTES = 16
_MAC_BYTES = 32  # SHA-256
_RECORD_KEYS = ("id", "delivered", "consumed", "tds", "paused", "t")


class SlackFrameError(ValueError):
    """A frame that is not valid (malformed msgpack, wrong shape, a bad field)."""


class SlackFrameTooLarge(SlackFrameError):
    """A frame over ``max_bytes`` (checked before decoding anything)."""


class SlackAuthError(SlackFrameError):
    """A ``hello`` whose MAC does not match, or a batch on a connection not yet authenticated."""


@dataclass(frozen=True, slots=True)
class SlackRecord:
    """One stream's delivery, as measured by the gateway at ``t_s``."""

    stream_id: str  # the gateway's stream id (``andes_stream_id`` in the request's vllm_xargs)
    delivered: int  # tokens the gateway has received from the engine for this stream
    consumed: int  # tokens the reader has read so far (client acks, else the pacer's model)
    tds_tok_s: float  # the reader's current pace, tokens per second
    paused: bool  # the reader is not reading (tab hidden)
    t_s: float  # when measured: the gateway's wall clock, seconds since the epoch

    def __post_init__(self) -> None:
        _check_record(self, "record")

    def to_report(self, t_s: float) -> SlackReport:
        """The policy's view of this record, dated ``t_s`` on the receiver's clock."""
        return SlackReport(
            delivered=self.delivered,
            consumed=self.consumed,
            tds_tok_s=self.tds_tok_s,
            paused=self.paused,
            t_s=t_s,
        )


@dataclass(frozen=True, slots=True)
class SlackBatch:
    """A decoded ``slack`` frame."""

    sent_s: float  # when the frame left the gateway, the gateway's wall clock
    records: tuple[SlackRecord, ...]


def _check_record(r: SlackRecord, where: str) -> None:
    if not isinstance(r.stream_id, str) or not 0 < len(r.stream_id) <= MAX_ID_CHARS:
        raise SlackFrameError(
            f"{where}: 'id' must be a string of 1..{MAX_ID_CHARS} characters, got {r.stream_id!r}"
        )
    for name, value in (("delivered", r.delivered), ("consumed", r.consumed)):
        if type(value) is not int or value < 0:
            raise SlackFrameError(f"{where}: {name!r} must be an integer >= 0, got {value!r}")
    if r.consumed > r.delivered:
        raise SlackFrameError(
            f"{where}: 'consumed' ({r.consumed}) must not exceed 'delivered' ({r.delivered})"
        )
    if not _is_number(r.tds_tok_s) or not r.tds_tok_s > 0:
        raise SlackFrameError(f"{where}: 'tds' must be a finite number > 0, got {r.tds_tok_s!r}")
    if type(r.paused) is not bool:
        raise SlackFrameError(f"{where}: 'paused' must be true or false, got {r.paused!r}")
    if not _is_number(r.t_s):
        raise SlackFrameError(f"{where}: 't' must be a finite number, got {r.t_s!r}")


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


# -- encoding -------------------------------------------------------------------------------------


def encode_batch(records: Iterable[SlackRecord], sent_s: float) -> bytes:
    """One ``slack`` frame carrying ``records``, stamped as sent at ``sent_s`` (gateway wall clock).

    Authentication is per connection (:func:`encode_hello`), not per frame, so batches carry no
    MAC: the receiver drops every batch on a connection that has not authenticated.
    """
    if not _is_number(sent_s):
        raise ValueError(f"sent_s must be a finite number, got {sent_s!r}")
    return msgpack.packb(
        {
            "type": "slack",
            "v": VERSION,
            "sent": float(sent_s),
            "records": [
                {
                    "id": r.stream_id,
                    "delivered": r.delivered,
                    "consumed": r.consumed,
                    "tds": float(r.tds_tok_s),
                    "paused": r.paused,
                    "t": float(r.t_s),
                }
                for r in records
            ],
        },
        use_bin_type=True,
    )


def encode_challenge(nonce: bytes) -> bytes:
    """The server's first frame on a connection when a secret is set."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return msgpack.packb({"type": "challenge", "v": VERSION, "nonce": nonce}, use_bin_type=True)


def hello_mac(secret: str | bytes, nonce: bytes) -> bytes:
    """``HMAC-SHA256(secret, nonce)``: what the gateway proves it knows the secret with."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, nonce, hashlib.sha256).digest()


def encode_hello(secret: str | bytes, nonce: bytes) -> bytes:
    """The gateway's answer to a challenge."""
    return msgpack.packb(
        {"type": "hello", "v": VERSION, "mac": hello_mac(secret, nonce)}, use_bin_type=True
    )


# -- decoding -------------------------------------------------------------------------------------


def _unpack(data: bytes, max_bytes: int, max_records: int) -> dict[str, object]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SlackFrameError(f"frame must be binary (msgpack), got {type(data).__name__}")
    if len(data) > max_bytes:
        raise SlackFrameTooLarge(f"frame of {len(data)} bytes exceeds max_bytes={max_bytes}")
    try:
        # The limits bound what a hostile frame can make the decoder allocate; strict_map_key
        # keeps map keys to str/bytes.
        obj = msgpack.unpackb(
            data,
            raw=False,
            max_str_len=max(MAX_ID_CHARS * 4, 64),
            max_bin_len=64,
            max_array_len=max_records,
            max_map_len=32,
            max_ext_len=0,
        )
    except (ValueError, TypeError) as exc:  # msgpack.UnpackException subclasses ValueError
        raise SlackFrameError(f"not a msgpack frame within limits: {exc}") from None
    if not isinstance(obj, dict):
        raise SlackFrameError(f"frame must be a msgpack map, got {type(obj).__name__}")
    if obj.get("v") != VERSION:
        raise SlackFrameError(f"unsupported frame version {obj.get('v')!r} (expected {VERSION})")
    return obj


def decode_frame_type(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> str:
    """The ``type`` of a frame (``slack``, ``hello``, ``challenge``); checks only the envelope."""
    obj = _unpack(data, max_bytes, DEFAULT_MAX_RECORDS)
    kind = obj.get("type")
    if kind not in ("slack", "hello", "challenge"):
        raise SlackFrameError(f"unknown frame type {kind!r}")
    return str(kind)


def decode_batch(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> SlackBatch:
    """Decode and validate a ``slack`` frame; raise :class:`SlackFrameError` saying what's wrong."""
    obj = _unpack(data, max_bytes, max_records)
    if obj.get("type") != "slack":
        raise SlackFrameError(f"expected a 'slack' frame, got type {obj.get('type')!r}")
    sent = obj.get("sent")
    if not _is_number(sent):
        raise SlackFrameError(f"'sent' must be a finite number, got {sent!r}")
    raw = obj.get("records")
    if not isinstance(raw, list):
        raise SlackFrameError(f"'records' must be an array, got {type(raw).__name__}")
    if len(raw) > max_records:  # msgpack's max_array_len already bounds it; say so precisely
        raise SlackFrameError(f"{len(raw)} records exceed max_records={max_records}")
    records = []
    for i, item in enumerate(raw):
        where = f"record {i}"
        if not isinstance(item, dict):
            raise SlackFrameError(f"{where}: must be a map, got {type(item).__name__}")
        missing = [k for k in _RECORD_KEYS if k not in item]
        if missing:
            raise SlackFrameError(f"{where}: missing {', '.join(map(repr, missing))}")
        try:
            record = SlackRecord(
                stream_id=item["id"],
                delivered=item["delivered"],
                consumed=item["consumed"],
                tds_tok_s=float(item["tds"]) if type(item["tds"]) is int else item["tds"],
                paused=item["paused"],
                t_s=float(item["t"]) if type(item["t"]) is int else item["t"],
            )
        except SlackFrameError as exc:
            raise SlackFrameError(str(exc).replace("record:", f"{where}:", 1)) from None
        records.append(record)
    return SlackBatch(sent_s=float(sent), records=tuple(records))  # type: ignore[arg-type]


def decode_challenge(data: bytes) -> bytes:
    """The nonce of a server's ``challenge`` frame."""
    obj = _unpack(data, 1024, 1)
    if obj.get("type") != "challenge":
        raise SlackFrameError(f"expected a 'challenge' frame, got type {obj.get('type')!r}")
    nonce = obj.get("nonce")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise SlackFrameError(f"'nonce' must be {NONCE_BYTES} bytes, got {nonce!r}")
    return nonce


def decode_hello(data: bytes) -> bytes:
    """The MAC of a gateway's ``hello`` frame."""
    obj = _unpack(data, 1024, 1)
    if obj.get("type") != "hello":
        raise SlackAuthError(f"expected a 'hello' frame first, got type {obj.get('type')!r}")
    mac = obj.get("mac")
    if not isinstance(mac, bytes) or len(mac) != _MAC_BYTES:
        raise SlackAuthError(f"'mac' must be {_MAC_BYTES} bytes")
    return mac


def verify_hello(data: bytes, secret: str | bytes, nonce: bytes) -> None:
    """Raise :class:`SlackAuthError` unless ``data`` is a ``hello`` proving ``secret``."""
    mac = decode_hello(data)
    if not hmac.compare_digest(mac, hello_mac(secret, nonce)):
        raise SlackAuthError("hello: wrong MAC (the secrets differ)")


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
        self._reports: OrderedDict[str, SlackReport] = OrderedDict()
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
            reports[sid] = record.to_report(t_s)
            reports.move_to_end(sid)
            stored += 1
        while len(reports) > self.max_entries:
            reports.popitem(last=False)
            counters.evicted += 1
        counters.frames += 1
        counters.records += stored
        return stored

    def fresh(self, stream_id: str, now_s: float, stale_after_s: float) -> SlackReport | None:
        """The latest report for ``stream_id`` if it is at most ``stale_after_s`` old, else None."""
        report = self._reports.get(stream_id)
        if report is None or now_s - report.t_s > stale_after_s:
            return None
        return report

    def fresh_many(
        self, stream_ids: Sequence[str], now_s: float, stale_after_s: float
    ) -> dict[str, SlackReport]:
        """:meth:`fresh` for many ids at once (one lock acquisition for a locked wrapper)."""
        out = {}
        reports = self._reports
        for sid in stream_ids:
            report = reports.get(sid)
            if report is not None and now_s - report.t_s <= stale_after_s:
                out[sid] = report
        return out
