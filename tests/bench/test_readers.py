"""The reader model: seeded draws, and the QoE on the reader's clock (bench/readers.py)."""

from __future__ import annotations

import math

import pytest

from bench.readers import (
    Reader,
    ReaderConfig,
    draw_reader,
    draw_readers,
    reader_clock_s,
    reader_qoe,
)
from bench.result import RequestRecord
from core.qoe import QoESpec, qoe

SPEC = QoESpec(ttft_s=1.0, tds_tok_s=4.0)


def on_time(n: int, spec: QoESpec, delay_s: float = 0.0) -> list[float]:
    return [spec.expected_s(i) + delay_s for i in range(n)]


@pytest.mark.parametrize("times", [
    on_time(20, SPEC),
    on_time(20, SPEC, delay_s=3.0),
    [0.5, 0.5, 0.5, 4.0, 4.1, 9.0, 9.0, 12.5],
    [],
])  # fmt: skip
def test_a_reader_as_declared_without_pause_scores_exactly_the_qoe_model(times) -> None:
    reader = Reader(SPEC, SPEC.tds_tok_s)
    assert reader.score(times, []) == qoe(times, SPEC)
    record = RequestRecord("r", 0.0, SPEC, 4, len(times), 0.0, list(times))
    assert record.qoe == record.declared_qoe == qoe(times, SPEC)
    record.read_tds_tok_s = SPEC.tds_tok_s  # said explicitly: still the same
    assert record.qoe == qoe(times, SPEC)


def test_a_pause_with_nothing_arriving_then_tokens_on_time_loses_nothing() -> None:
    # 8 tokens on time, then the tab is hidden 10 s (nothing arrives), then the rest on time on
    # the reader's clock: every later token arrives 10 s later on the wall clock.
    pause = (3.0, 13.0)  # the 8th token is expected at 2.75 s, the 9th at 3.0 s
    times = [t if t < pause[0] else t + 10.0 for t in on_time(30, SPEC)]
    assert reader_qoe(times, SPEC, [pause]) == 1.0
    assert qoe(times, SPEC) < 0.8  # on the wall clock, the same stream looks badly late


def test_tokens_that_arrive_while_hidden_are_read_from_the_return() -> None:
    pause = [(2.0, 12.0)]
    assert reader_clock_s(1.0, pause) == 1.0
    assert reader_clock_s(5.0, pause) == 2.0  # hidden: available when the reader is back
    assert reader_clock_s(12.0, pause) == 2.0
    assert reader_clock_s(20.0, pause) == 10.0
    # All 8 arrive during the pause: on the reader's clock they arrive at 2.0 s (1 s late).
    times = [5.0] * 8
    assert reader_qoe(times, SPEC, pause) == qoe([2.0] * 8, SPEC)
    # A pause after the last token changes nothing.
    late = on_time(8, SPEC, 0.5)
    assert reader_qoe(late, SPEC, [(30.0, 60.0)]) == qoe(late, SPEC)


def test_a_slow_reader_is_scored_at_its_own_pace() -> None:
    slow = Reader(SPEC, 2.0)
    assert slow.misdeclared and slow.actual == QoESpec(1.0, 2.0)
    times = on_time(20, QoESpec(1.0, 2.0), delay_s=1.0)  # on time for it, 1 s late to start
    assert slow.score(times, []) == qoe(times, QoESpec(1.0, 2.0))
    assert slow.score(times, []) > qoe(times, SPEC)  # the declared pace would call it later
    record = RequestRecord("r", 0.0, SPEC, 4, 20, 0.0, times, read_tds_tok_s=2.0,
                           pauses_s=[(4.0, 9.0)])  # fmt: skip
    assert record.qoe == reader_qoe(times, QoESpec(1.0, 2.0), [(4.0, 9.0)])
    back = RequestRecord.from_json(record.to_json())
    assert back == record and back.qoe == record.qoe


def test_records_written_before_readers_existed_still_load() -> None:
    old = RequestRecord("r", 0.0, SPEC, 4, 2, 0.0, [1.0, 1.5]).to_json()
    del old["read_tds_tok_s"], old["pauses_s"]
    rec = RequestRecord.from_json(old)
    assert rec.read_tds_tok_s is None and rec.pauses_s == [] and rec.qoe == qoe([1.0, 1.5], SPEC)


def test_bad_pauses_are_refused() -> None:
    with pytest.raises(ValueError, match="disjoint"):
        reader_qoe([1.0], SPEC, [(5.0, 3.0)])
    with pytest.raises(ValueError, match="disjoint"):
        reader_qoe([1.0], SPEC, [(1.0, 5.0), (4.0, 6.0)])


def test_draws_are_deterministic_by_seed_and_request() -> None:
    ids = [(f"r{i}", SPEC) for i in range(200)]
    a, b = draw_readers(ids, ReaderConfig(seed=3)), draw_readers(ids, ReaderConfig(seed=3))
    assert a == b
    assert a != draw_readers(ids, ReaderConfig(seed=4))
    # A request's reader does not depend on what else is in the plan (same at every load).
    assert draw_reader("r7", SPEC, ReaderConfig(seed=3)) == a["r7"]
    # Changing one share does not reshuffle the other draw.
    no_pause = draw_readers(ids, ReaderConfig(seed=3, pause_share=0.0))
    assert [r.read_tds_tok_s for r in no_pause.values()] == [r.read_tds_tok_s for r in a.values()]


def test_shares_and_ranges_are_respected() -> None:
    cfg = ReaderConfig(seed=1)
    readers = list(draw_readers([(f"q{i}", SPEC) for i in range(4000)], cfg).values())
    slow = [r for r in readers if r.misdeclared]
    hiding = [r for r in readers if r.pauses]
    assert abs(len(slow) / len(readers) - 0.3) < 0.03
    assert abs(len(hiding) / len(readers) - 0.2) < 0.03
    assert all(0.5 * 4.0 <= r.read_tds_tok_s <= 0.8 * 4.0 for r in slow)
    assert all(2.0 <= r.pause_after_s <= 20.0 and 15.0 <= r.pause_s <= 45.0 for r in hiding)
    assert {r.declared for r in readers} == {SPEC}
    none = draw_readers([(f"q{i}", SPEC) for i in range(100)],
                        ReaderConfig(misdeclared_share=0, pause_share=0))  # fmt: skip
    assert not any(r.misdeclared or r.pauses for r in none.values())


def test_pauses_count_only_while_the_stream_arrives() -> None:
    r = Reader(SPEC, 4.0, pause_after_s=2.0, pause_s=10.0)
    assert r.pause_interval(1.5) == (3.5, 13.5)
    assert r.pauses_during([1.5, 2.0, 9.0]) == [(3.5, 13.5)]
    assert r.pauses_during([1.5, 2.0, 3.0]) == []  # over before the reader hid the tab
    assert Reader(SPEC, 4.0).pauses_during([1.0, 2.0]) == []


@pytest.mark.parametrize("bad", [
    {"misdeclared_share": 1.5}, {"pause_share": -0.1}, {"pace_factor": (0.9, 0.5)},
    {"pace_factor": (0.0, 0.5)}, {"pause_s": (10.0, math.inf)}, {"pause_after_s": (-1.0, 2.0)},
])  # fmt: skip
def test_bad_configs_quote_the_value(bad) -> None:
    with pytest.raises(ValueError) as info:
        ReaderConfig(**bad)
    assert repr(next(iter(bad.values()))) in str(info.value)
