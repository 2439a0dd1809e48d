"""The slack channel's wire format. Sans-I/O.

The gateway measures each live stream's delivery (:class:`core.slack.SlackRecord`) and sends
batches of records to the engine's scheduler every 50–100 ms over a WebSocket
(:mod:`slack.sender` sends, :mod:`slack.receiver` receives). This module is the one definition of
that wire format both ends use. It imports no asyncio, no websockets, no vLLM: bytes in, records
out.

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
from collections.abc import Iterable
from dataclasses import dataclass

import msgpack

from core.slack import MAX_ID_CHARS, SlackRecord

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_RECORDS",
    "MAX_ID_CHARS",
    "NONCE_BYTES",
    "VERSION",
    "SlackAuthError",
    "SlackBatch",
    "SlackFrameError",
    "SlackFrameTooLarge",
    "decode_batch",
    "decode_challenge",
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
class SlackBatch:
    """A decoded ``slack`` frame."""

    sent_s: float  # when the frame left the gateway, the gateway's wall clock
    records: tuple[SlackRecord, ...]


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
        except ValueError as exc:
            raise SlackFrameError(f"{where}: {exc}") from None
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


