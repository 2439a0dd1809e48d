"""Generate ``tests/golden/slack_frames.json``: the slack side channel's frames, byte for byte.

Valid frames are written by hand as msgpack bytes via ``msgpack.packb`` of plain dicts (not through
``slack/wire.py``), so the file pins the wire format independently of the encoder; the tests check
that the encoder reproduces the bytes and the decoder the records. Invalid frames carry a fragment
of the decoder's error message.

Run from the repository root after a deliberate change of the format, and review the diff::

    .venv/bin/python tests/golden/make_slack_frames.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack

OUT = Path(__file__).resolve().parent / "slack_frames.json"


def pack(obj: Any) -> str:
    return msgpack.packb(obj, use_bin_type=True).hex()


def rec(
    sid: str, delivered: int, consumed: int, tds: float, paused: bool, t: float
) -> dict[str, Any]:
    return {"id": sid, "delivered": delivered, "consumed": consumed, "tds": tds,
            "paused": paused, "t": t}


def batch(records: list[dict[str, Any]], sent: float = 1700000000.5) -> dict[str, Any]:
    return {"type": "slack", "v": 1, "sent": sent, "records": records}


def main() -> None:
    r1 = rec("s-1", 10, 4, 4.8, False, 1700000000.25)
    r2 = rec("chatcmpl-7f3a", 120, 120, 3.3, True, 1700000000.5)
    valid = [
        {"name": "empty batch", "records": [], "sent": 1700000000.5},
        {"name": "one record", "records": [r1], "sent": 1700000000.5},
        {"name": "two records, one paused", "records": [r1, r2], "sent": 1700000000.5},
        {"name": "nothing delivered yet", "records": [rec("s-0", 0, 0, 4.5, False, 1.0)],
         "sent": 2.0},
    ]
    for case in valid:
        case["hex"] = pack(batch(case["records"], case["sent"]))
    # Accepted though not what the encoder writes: unknown keys ignored, ints where floats go.
    lenient = [
        {"name": "unknown keys are ignored",
         "hex": pack({**batch([{**r1, "extra": 1}]), "future": "x"}),
         "sent": 1700000000.5, "records": [r1]},
        {"name": "integer tds and times",
         "hex": pack(batch([rec("s-2", 3, 1, 5, False, 7)], sent=8)),
         "sent": 8.0, "records": [rec("s-2", 3, 1, 5.0, False, 7.0)]},
    ]
    bad = rec("s-1", 10, 4, 4.8, False, 1.0)
    invalid = [
        ("not msgpack", "c1", "not a msgpack frame"),
        ("trailing bytes", pack(batch([])) + "00", "not a msgpack frame"),
        ("not a map", pack([1, 2, 3]), "must be a msgpack map"),
        ("wrong version", pack({**batch([]), "v": 2}), "unsupported frame version 2"),
        ("wrong type", pack({**batch([]), "type": "hello"}), "expected a 'slack' frame"),
        ("sent missing", pack({"type": "slack", "v": 1, "records": []}), "'sent' must be"),
        ("records not an array", pack({**batch([]), "records": {}}), "'records' must be an array"),
        ("record not a map", pack(batch([[1, 2]])), "record 0: must be a map"),
        ("record missing keys", pack(batch([r1, {"id": "x", "delivered": 1}])),
         "record 1: missing 'consumed', 'tds', 'paused', 't'"),
        ("empty id", pack(batch([{**bad, "id": ""}])), "record 0: 'id' must be a string"),
        ("id not a string", pack(batch([{**bad, "id": 7}])), "record 0: 'id' must be a string"),
        ("negative delivered", pack(batch([{**bad, "delivered": -1}])),
         "record 0: 'delivered' must be an integer >= 0, got -1"),
        ("float consumed", pack(batch([{**bad, "consumed": 1.5}])),
         "record 0: 'consumed' must be an integer >= 0, got 1.5"),
        ("consumed beyond delivered", pack(batch([{**bad, "consumed": 11}])),
         "record 0: 'consumed' (11) must not exceed 'delivered' (10)"),
        ("zero tds", pack(batch([{**bad, "tds": 0.0}])),
         "record 0: 'tds' must be a finite number > 0"),
        ("nan tds", pack(batch([{**bad, "tds": float("nan")}])), "record 0: 'tds' must be"),
        ("paused not bool", pack(batch([{**bad, "paused": 1}])),
         "record 0: 'paused' must be true or false"),
        ("infinite t", pack(batch([{**bad, "t": float("inf")}])), "record 0: 't' must be a finite"),
        ("too many records (max_records=4)", pack(batch([bad] * 5)), "max_array_len"),
        ("too large (max_bytes=64)", pack(batch([bad, bad])), "exceeds max_bytes=64"),
    ]
    hello = {
        "secret": "s3cret",
        "nonce_hex": bytes(range(16)).hex(),
    }
    import hashlib
    import hmac

    mac = hmac.new(b"s3cret", bytes(range(16)), hashlib.sha256).digest()
    hello["challenge_hex"] = pack({"type": "challenge", "v": 1, "nonce": bytes(range(16))})
    hello["hello_hex"] = pack({"type": "hello", "v": 1, "mac": mac})
    data = {
        "limits": {"max_bytes": 1 << 20, "max_records": 16384,
                   "note": "invalid cases named '(max_...=N)' use that limit instead"},
        "valid": valid,
        "lenient": lenient,
        "invalid": [{"name": n, "hex": h, "error": e} for n, h, e in invalid],
        "auth": hello,
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
