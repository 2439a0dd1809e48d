"""The pacer: the golden vectors (shared with client_js/src/pacer.js) and its behaviour on a fake
clock."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from gateway.pacer import Chunk, Pacer, PacerConfig, PacerOverflow

VECTORS = json.loads((Path(__file__).parents[1] / "golden" / "pacer_vectors.json").read_text())


def dec(x: Any) -> Any:
    return float(x) if x in ("inf", "-inf") else x


def same(a: Any, b: Any) -> bool:
    """Equal, with floats compared to 1e-9 (the vectors store exact reprs; the margin only spares
    the test from float noise in a harmless refactor)."""
    a, b = dec(a), dec(b)
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return a == b or math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def state(p: Pacer, now: float) -> dict[str, Any]:
    # The order matters (consumed() advances the reading model); it is the vectors' order.
    return {"consumed": p.consumed(now), "buffered": p.buffered(now), "slack_s": p.slack_s(now),
            "next_due_s": p.next_due_s(), "fed": p.fed, "sent": p.sent, "done": p.done,
            "paused": p.paused, "tds": p.tds_tok_s}


def run_op(p: Pacer, op: dict[str, Any]) -> dict[str, Any]:
    t, kind = op["t"], op["op"]
    got: dict[str, Any] = {}
    try:
        if kind == "feed":
            p.feed(op["pieces"], t)
        elif kind == "due":
            got["chunks"] = [asdict(c) for c in p.due(t)]
        elif kind == "set_pace":
            p.set_pace(op["tds"], t)
        elif kind == "ack":
            p.ack(op["consumed"])
        elif kind == "close":
            p.close()
        else:
            getattr(p, kind)(t)
        got["error"] = None
    except PacerOverflow:
        got["error"] = "overflow"
    except ValueError:
        got["error"] = "invalid"
    got["state"] = state(p, t)
    return got


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_golden_vector(vector: dict[str, Any]) -> None:
    p = Pacer(PacerConfig(**vector["config"]))
    for n, op in enumerate(vector["ops"]):
        got = run_op(p, op)
        want = {k: op[k] for k in got}
        assert same(got, want), f"op #{n} {op['op']} at t={op['t']}: got {got}, want {want}"


@pytest.mark.parametrize("bad", VECTORS["bad_configs"], ids=lambda b: b["field"])
def test_golden_bad_config(bad: dict[str, Any]) -> None:
    fields = {k: dec(v) for k, v in bad["config"].items()}
    with pytest.raises(ValueError) as err:
        PacerConfig(**fields)
    assert str(err.value) == bad["message"]
    assert repr(fields[bad["field"]]) in str(err.value)  # the message quotes the bad value


def test_vectors_cover_every_operation_and_outcome() -> None:
    ops = {op["op"] for v in VECTORS["vectors"] for op in v["ops"]}
    assert ops == {"feed", "due", "close", "pause", "resume", "set_pace", "ack"}
    errors = {op["error"] for v in VECTORS["vectors"] for op in v["ops"]}
    assert errors == {None, "invalid", "overflow"}
    modes = {v["config"]["mode"] for v in VECTORS["vectors"]}
    assert modes == {"server", "client", "off"}


# -- behaviour on a fake clock ---------------------------------------------------------------------


class Driver:
    """A transport on a fake clock: feeds on schedule, calls due() whenever next_due_s() says, and
    records what went out when."""

    def __init__(self, config: PacerConfig) -> None:
        self.pacer = Pacer(config)
        self.now = 0.0
        self.sent: list[tuple[float, Chunk]] = []

    def run_until(self, t_s: float) -> None:
        while True:
            nd = self.pacer.next_due_s()
            if nd is None or max(nd, self.now) > t_s:
                break
            self.now = max(nd, self.now)
            out = self.pacer.due(self.now)
            assert out, f"due() at next_due_s()={nd} released nothing"
            self.sent += [(self.now, c) for c in out]
        self.now = max(self.now, t_s)

    def feed(self, t_s: float, pieces: list[str]) -> None:
        self.run_until(t_s)
        self.pacer.feed(pieces, t_s)

    def text(self) -> str:
        return "".join(c.text for _, c in self.sent)


def reading_times(arrivals: list[float], tds: float) -> list[float]:
    """The QoE model's c_i = max(d_i, c_{i-1} + 1/tds)."""
    out: list[float] = []
    for d in arrivals:
        out.append(d if not out else max(d, out[-1] + 1 / tds))
    return out


@pytest.mark.parametrize("engine_rate", [2.0, 5.0, 30.0])
def test_releases_at_pace_never_late_and_at_most_one_frame_early(engine_rate: float) -> None:
    tds, frame = 5.0, 0.05
    d = Driver(PacerConfig(tds_tok_s=tds, frame_s=frame, word_boundary=False))
    arrivals = [0.3 + k / engine_rate for k in range(25)]
    for k, t in enumerate(arrivals):
        d.feed(t, [f"t{k} "])
    d.pacer.close()
    d.run_until(100.0)
    assert d.pacer.done and d.text() == "".join(f"t{k} " for k in range(25))
    want = reading_times(arrivals, tds)
    for sent_at, chunk in d.sent:
        for i in range(chunk.index, chunk.index + chunk.count):
            assert sent_at <= want[i] + 1e-9, f"token {i} late: {sent_at} > {want[i]}"
            assert sent_at >= want[i] - frame - 1e-9, f"token {i} early: {sent_at} < {want[i]}"
            assert sent_at >= arrivals[i]


def test_coalesces_a_burst_to_the_frame_rate() -> None:
    d = Driver(PacerConfig(tds_tok_s=100, frame_s=0.05))
    d.feed(0.0, ["x "] * 200)
    d.pacer.close()
    d.run_until(10.0)
    times = [t for t, _ in d.sent]
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(times))
    assert max(c.count for _, c in d.sent) <= 6  # ~5 tokens a frame at 100 tok/s
    assert d.pacer.sent == 200
    assert times[-1] == pytest.approx(199 / 100, abs=0.05)  # the last one at its reading time


def test_word_boundary_keeps_received_words_whole() -> None:
    pieces = ["Stre", "am", "ing", " text", " at", " rea", "ding", " pace", "."]
    whole = Driver(PacerConfig(tds_tok_s=3))
    whole.feed(0.0, pieces)
    whole.run_until(10.0)
    assert [c.text for _, c in whole.sent] == ["Streaming", " text", " at", " reading", " pace."]
    split = Driver(PacerConfig(tds_tok_s=3, word_boundary=False))
    split.feed(0.0, pieces)
    split.run_until(10.0)
    assert [c.text for _, c in split.sent] == pieces


def test_word_lookahead_is_bounded() -> None:
    d = Driver(PacerConfig(tds_tok_s=1, max_word_lookahead=3))
    d.feed(0.0, ["a"] * 10 + [" b"])
    d.run_until(0.0)
    assert [c.count for _, c in d.sent] == [4]


def test_pause_releases_nothing_and_resume_continues_at_pace() -> None:
    d = Driver(PacerConfig(tds_tok_s=4, word_boundary=False))
    d.feed(0.0, ["w "] * 20)
    d.run_until(1.0)
    before = d.pacer.sent
    d.pacer.pause(1.0)
    assert d.pacer.next_due_s() is None and d.pacer.slack_s(1.0) == math.inf
    assert d.pacer.due(5.0) == []
    d.now = 5.0
    d.pacer.resume(5.0)
    d.run_until(6.0)
    resumed = [(t, c) for t, c in d.sent if t >= 5.0]
    assert d.pacer.sent == before + 4 + 1  # 1 s at 4 tok/s, plus the one due at 6.0 - frame
    assert resumed[0][0] == 5.0


def test_set_pace_changes_the_rate() -> None:
    d = Driver(PacerConfig(tds_tok_s=2, word_boundary=False))
    d.feed(0.0, ["w "] * 100)
    d.run_until(2.0)
    at_2 = d.pacer.sent
    d.pacer.set_pace(10, 2.0)
    d.run_until(4.0)
    assert 4 <= at_2 <= 6
    assert 19 <= d.pacer.sent - at_2 <= 22  # 2 s at 10 tok/s
    with pytest.raises(ValueError, match="-1"):
        d.pacer.set_pace(-1, 4.0)


@pytest.mark.parametrize(("end", "last_at"), [("pace", 1.75), ("flush", 0.5)])
def test_end_modes(end: str, last_at: float) -> None:
    d = Driver(PacerConfig(tds_tok_s=5, end=end))  # type: ignore[arg-type]
    d.feed(0.0, ["w "] * 10)
    d.run_until(0.5)
    d.pacer.close()
    d.run_until(10.0)
    assert d.pacer.done and d.pacer.sent == 10  # pace: token 9 is read at 9/5 s, sent a frame early
    assert d.sent[-1][0] == pytest.approx(last_at)


def test_overflow_refuses_the_feed_and_keeps_state() -> None:
    p = Pacer(PacerConfig(max_buffered_tokens=3))
    p.feed(["a", "b"], 0.0)
    with pytest.raises(PacerOverflow, match="max_buffered_tokens=3"):
        p.feed(["c", "d"], 0.1)
    assert p.fed == 2
    p.feed(["c"], 0.2)
    assert p.fed == 3


def test_feed_after_close_and_bad_ack_raise() -> None:
    p = Pacer(PacerConfig(mode="client"))
    p.feed(["a", "b"], 0.0)
    assert [c.text for c in p.due(0.0)] == ["ab"]
    with pytest.raises(ValueError, match="ack of 3 tokens, but 2 were sent"):
        p.ack(3)
    p.close()
    with pytest.raises(ValueError, match="after close"):
        p.feed(["c"], 0.3)


def test_client_mode_slack_follows_acks_then_model() -> None:
    p = Pacer(PacerConfig(tds_tok_s=4, mode="client"))
    p.feed(["w "] * 8, 0.0)
    assert p.due(0.0)[0].count == 8  # everything goes out at once
    assert p.consumed(0.0) == 1  # the model: the first token is read on arrival
    assert p.consumed(1.0) == 5
    p.ack(2)  # the client is behind the model: the ack wins
    assert p.buffered(1.0) == 6 and p.slack_s(1.0) == pytest.approx(1.5)
    p.ack(1)  # never moves backwards
    assert p.consumed(1.1) == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [("tds_tok_s", 0.0), ("tds_tok_s", math.nan), ("mode", "push"), ("frame_s", 1.5),
     ("max_word_lookahead", -2), ("end", "truncate"), ("max_buffered_tokens", 0)],
)
def test_bad_config_names_the_field_and_quotes_the_value(field: str, value: object) -> None:
    with pytest.raises(ValueError) as err:
        PacerConfig(**{field: value})  # type: ignore[arg-type]
    assert field in str(err.value) and repr(value) in str(err.value)
