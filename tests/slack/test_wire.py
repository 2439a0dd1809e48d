"""The slack frame codec against the golden frames, and the receiver's table (slack/wire.py,
slack/table.py)."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.slack import SlackRecord
from slack.table import SlackTable, TokenBucket
from slack.wire import (
    SlackAuthError,
    SlackBatch,
    SlackFrameError,
    SlackFrameTooLarge,
    decode_batch,
    decode_challenge,
    encode_batch,
    encode_challenge,
    encode_hello,
    verify_hello,
)

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "slack_frames.json").read_text())


def _record(d: dict) -> SlackRecord:
    return SlackRecord(d["id"], d["delivered"], d["consumed"], d["tds"], d["paused"], d["t"])


def _limits(name: str) -> dict[str, int]:
    found = re.search(r"\((max_\w+)=(\d+)\)", name)
    return {found.group(1): int(found.group(2))} if found else {}


@pytest.mark.parametrize("case", GOLDEN["valid"], ids=lambda c: c["name"])
def test_encoder_writes_the_golden_bytes(case: dict) -> None:
    records = [_record(r) for r in case["records"]]
    assert encode_batch(records, case["sent"]).hex() == case["hex"]


@pytest.mark.parametrize("case", GOLDEN["valid"] + GOLDEN["lenient"], ids=lambda c: c["name"])
def test_decoder_reads_the_golden_records(case: dict) -> None:
    batch = decode_batch(bytes.fromhex(case["hex"]))
    assert batch == SlackBatch(case["sent"], tuple(_record(r) for r in case["records"]))
    assert all(type(r.tds_tok_s) is float and type(r.t_s) is float for r in batch.records)


@pytest.mark.parametrize("case", GOLDEN["invalid"], ids=lambda c: c["name"])
def test_decoder_rejects_the_golden_invalid_frames(case: dict) -> None:
    with pytest.raises(SlackFrameError) as info:
        decode_batch(bytes.fromhex(case["hex"]), **_limits(case["name"]))
    assert case["error"] in str(info.value)


def test_oversized_frame_is_its_own_error_and_checked_before_decoding() -> None:
    with pytest.raises(SlackFrameTooLarge):
        decode_batch(b"\xc1" * 100, max_bytes=64)  # would be malformed, but is too large first


def test_text_frame_is_rejected() -> None:
    with pytest.raises(SlackFrameError, match="must be binary"):
        decode_batch("not bytes")  # type: ignore[arg-type]


def test_auth_golden_frames() -> None:
    auth = GOLDEN["auth"]
    nonce = bytes.fromhex(auth["nonce_hex"])
    assert encode_challenge(nonce).hex() == auth["challenge_hex"]
    assert decode_challenge(bytes.fromhex(auth["challenge_hex"])) == nonce
    assert encode_hello(auth["secret"], nonce).hex() == auth["hello_hex"]
    verify_hello(bytes.fromhex(auth["hello_hex"]), auth["secret"], nonce)
    with pytest.raises(SlackAuthError, match="wrong MAC"):
        verify_hello(bytes.fromhex(auth["hello_hex"]), "other", nonce)
    with pytest.raises(SlackAuthError, match="wrong MAC"):
        verify_hello(bytes.fromhex(auth["hello_hex"]), auth["secret"], bytes(16))
    with pytest.raises(SlackAuthError, match="expected a 'hello' frame first"):
        verify_hello(bytes.fromhex(GOLDEN["valid"][0]["hex"]), auth["secret"], nonce)


def test_record_validates_on_construction() -> None:
    with pytest.raises(ValueError, match=r"'tds' must be a finite number > 0, got -1\.0"):
        SlackRecord("s", 1, 0, -1.0, False, 0.0)
    with pytest.raises(ValueError, match=r"'consumed' \(2\) must not exceed"):
        SlackRecord("s", 1, 2, 4.0, False, 0.0)


_ids = st.text(min_size=1, max_size=40)
_records = st.builds(
    lambda sid, d, c, tds, paused, t: SlackRecord(sid, d, min(c, d), tds, paused, t),
    _ids,
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 40),
    st.floats(0.01, 1000),
    st.booleans(),
    st.floats(-1e12, 1e12),
)


@given(st.lists(_records, max_size=20), st.floats(-1e12, 1e12))
def test_round_trip(records: list[SlackRecord], sent: float) -> None:
    assert decode_batch(encode_batch(records, sent)) == SlackBatch(sent, tuple(records))


@given(st.binary(max_size=200))
def test_decoder_never_fails_other_than_with_a_frame_error(data: bytes) -> None:
    with contextlib.suppress(SlackFrameError):
        decode_batch(data)


def _batch(sent_s: float, *records: tuple[str, int, int, float]) -> SlackBatch:
    """Records ``(id, delivered, consumed, t_s)`` at pace 4."""
    return SlackBatch(sent_s, tuple(SlackRecord(i, d, c, 4.0, False, t) for i, d, c, t in records))


def test_table_dates_records_on_the_receivers_clock_by_their_age_at_sending() -> None:
    table = SlackTable()
    # Gateway clock ~1.7e9 (wall); receiver clock ~100 (anything): only differences count.
    assert table.apply(_batch(1.7e9 + 0.5, ("a", 8, 4, 1.7e9 + 0.2)), received_s=100.0) == 1
    report = table.fresh("a", now_s=100.0, stale_after_s=1.0)
    assert report is not None
    assert report.t_s == pytest.approx(99.7)
    assert report.slack_s(100.0) == pytest.approx(4 / 4.0 - 0.3)
    assert table.fresh("a", now_s=100.69, stale_after_s=1.0) is not None
    assert table.fresh("a", now_s=100.71, stale_after_s=1.0) is None  # stale: fall back
    assert table.fresh("b", now_s=100.0, stale_after_s=1.0) is None


def test_table_keeps_the_newest_report_when_batches_arrive_out_of_order() -> None:
    table = SlackTable()
    table.apply(_batch(10.0, ("a", 9, 1, 10.0)), received_s=50.0)
    table.apply(_batch(10.0, ("a", 5, 1, 9.0)), received_s=50.0)  # measured 1 s earlier
    report = table.fresh("a", 50.0, 5.0)
    assert report is not None and report.delivered == 9
    assert table.counters.superseded == 1


def test_table_drops_unknown_ids_and_forgets_unregistered_ones() -> None:
    table = SlackTable(require_known=True)
    table.register("a")
    assert table.apply(_batch(1.0, ("a", 1, 0, 1.0), ("x", 1, 0, 1.0)), received_s=1.0) == 1
    assert table.counters.unknown == 1
    table.unregister("a")
    assert table.fresh("a", 1.0, 5.0) is None and len(table) == 0
    table.apply(_batch(2.0, ("a", 2, 0, 2.0)), received_s=2.0)
    assert len(table) == 0 and table.counters.unknown == 2


def test_table_is_bounded_and_evicts_the_least_recently_updated() -> None:
    table = SlackTable(max_entries=2)
    table.apply(_batch(1.0, ("a", 1, 0, 1.0), ("b", 1, 0, 1.0)), received_s=1.0)
    table.apply(_batch(2.0, ("a", 2, 0, 2.0)), received_s=2.0)  # a is now newer than b
    table.apply(_batch(3.0, ("c", 1, 0, 3.0)), received_s=3.0)
    assert len(table) == 2 and table.counters.evicted == 1
    assert table.fresh("b", 3.0, 9.0) is None
    assert set(table.fresh_many(["a", "b", "c"], 3.0, 9.0)) == {"a", "c"}


def test_paused_report_has_unbounded_slack() -> None:
    table = SlackTable()
    table.apply(SlackBatch(1.0, (SlackRecord("p", 3, 3, 4.0, True, 1.0),)), received_s=5.0)
    report = table.fresh("p", 5.0, 1.0)
    assert report is not None and report.paused and math.isinf(report.slack_s(5.0))


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=3)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.05)  # half a token back
    assert bucket.allow(0.1)
    assert bucket.allow(10.0) and bucket.allow(10.0) and bucket.allow(10.0)
    assert not bucket.allow(10.0)  # refill is capped at the burst
    assert not bucket.allow(5.0)  # a clock going backwards refills nothing


def test_msgpack_limits_bound_allocation() -> None:
    # A 2^31-element array header with no body must fail fast, not allocate.
    frame = msgpack.packb({"type": "slack", "v": 1, "sent": 1.0, "records": []})
    hostile = frame[:-1] + b"\xdd\x7f\xff\xff\xff"
    with pytest.raises(SlackFrameError):
        decode_batch(hostile)
