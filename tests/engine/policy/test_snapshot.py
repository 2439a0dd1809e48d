"""The snapshot an adapter keeps, and the change log the fast path reads (policy/snapshot.py)."""

from __future__ import annotations

import pytest
from policy_snapshots import make_request

from engine.policy import snapshot as snapshot_module
from engine.policy.snapshot import Snapshot


def test_it_is_a_sequence_in_arrival_order_with_a_change_log() -> None:
    snap = Snapshot()
    a, b, c = (make_request(r, float(i)) for i, r in enumerate("abc"))
    for v in (a, b, c):
        snap.add(v)
    snap.take_changes()
    assert [v.req_id for v in snap] == ["a", "b", "c"] and snap[1] is b and len(snap) == 3
    snap.remove("b")
    snap.touch("a")
    snap.deliver("c", 3.0)
    changes = snap.take_changes()
    assert changes.removed == {"b"} and changes.touched == {"a"}
    assert changes.delivered == [("c", 3.0, 1)] and c.tracker.num_tokens == 1
    assert [v.req_id for v in snap] == ["a", "c"] and "b" not in snap
    assert len(snap.take_changes()) == 0  # taken: a fresh log


def test_two_live_requests_with_one_id_are_refused() -> None:
    snap = Snapshot()
    snap.add(make_request("a", 0.0))
    with pytest.raises(ValueError, match="'a'"):
        snap.add(make_request("a", 1.0))


def test_a_log_nobody_reads_stays_bounded_and_says_it_overflowed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(snapshot_module, "MAX_LOG", 10)
    snap = Snapshot()
    snap.add(make_request("a", 0.0))
    for _ in range(25):
        snap.touch("a")
    changes = snap.take_changes()
    assert changes.overflowed and len(changes) <= 10
