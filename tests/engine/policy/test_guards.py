"""Where each reader is, measured or inferred, and the guards: the scalar rules (the definition
uses them) and their array forms (the fast path) agree, and say what the docstring says."""

from __future__ import annotations

import math
import random
from dataclasses import fields

import numpy as np
import pytest

from engine.policy.andes.guards import Row, reader_at, readers_at, starving, starving_at

NOW = 500.0


def random_row(rng: random.Random, i: int) -> Row:
    ntok = rng.choice([0, rng.randint(1, 300)])
    g = 1.0 / rng.uniform(2.0, 10.0)
    reported = ntok and rng.random() < 0.5
    return Row(
        req_id=f"r{i}", state=rng.randrange(4), arrival=NOW - rng.uniform(0, 100),
        ttft=rng.uniform(0.2, 2.0), g=g, ntok=ntok,
        last_read=rng.uniform(0, 100) if ntok else -math.inf, tokens=rng.randint(1, 900),
        blocks=rng.randint(1, 60), pending=0, cached=0,
        report_t=NOW - rng.uniform(0, 3) if reported else math.nan,
        report_buf=rng.choice([0.0, rng.uniform(0, 30)]) if reported else 0.0,
        report_paused=bool(reported and rng.random() < 0.3),
        report_g=1.0 / rng.uniform(1.0, 12.0) if reported else g,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(5))
def test_the_array_forms_agree_with_the_scalar_rules(seed: int) -> None:
    rng = random.Random(seed)
    rows = [random_row(rng, i) for i in range(200)]
    cols = {f.name: np.array([getattr(r, f.name) for r in rows], dtype=float)
            for f in fields(Row) if f.name != "req_id"}  # fmt: skip
    need, g_read, g_expect, due, stall = readers_at(cols, NOW, 1.0, 5.0)
    starve = starving_at(cols, stall, NOW, 30.0)
    for i, row in enumerate(rows):
        rd = reader_at(row, NOW, 1.0, 5.0)
        assert (rd.need, rd.g_read, rd.g_expect, rd.due, rd.stall_from) == (
            need[i], g_read[i], g_expect[i], due[i], stall[i])
        assert starving(row, rd, NOW, 30.0) == starve[i]


def test_a_fresh_report_replaces_the_inference_and_a_stale_one_does_not() -> None:
    base = dict(req_id="r", state=2, arrival=NOW - 10, ttft=1.0, g=0.2, ntok=20, last_read=5.0,
                tokens=60, blocks=4, pending=0, cached=0, report_paused=False)  # fmt: skip
    # The tracker says the reader needs token 20 at arrival + 5.2 s, i.e. 4.8 s ago.
    inferred = reader_at(Row(**base, report_t=math.nan, report_buf=0.0, report_g=0.2), NOW, 1, 5)
    assert inferred.need == pytest.approx(NOW - 4.8)
    # A fresh report: 3 s buffered at 0.5 s a token; needs it in 3 s plus half a token.
    fresh = Row(**base, report_t=NOW - 0.25, report_buf=3.0, report_g=0.5)
    rd = reader_at(fresh, NOW, 1.0, 5.0)
    assert rd.need == pytest.approx(NOW + 3.0 - 0.25 + 0.25) and rd.g_read == 0.5
    assert rd.stall_from == rd.need  # still reading: not stalled
    stale = Row(**base, report_t=NOW - 2.0, report_buf=3.0, report_g=0.5)
    assert reader_at(stale, NOW, 1.0, 5.0).need == inferred.need


def test_a_paused_reader_needs_nothing_once_its_cushion_is_buffered() -> None:
    base = dict(req_id="r", state=2, arrival=NOW - 10, ttft=1.0, g=0.2, ntok=20, last_read=5.0,
                tokens=60, blocks=4, pending=0, cached=0, report_t=NOW, report_g=0.2,
                report_paused=True)  # fmt: skip
    assert reader_at(Row(**base, report_buf=2.0), NOW, 1.0, 5.0).need == NOW + 2.0
    assert reader_at(Row(**base, report_buf=6.0), NOW, 1.0, 5.0).need == math.inf


def test_a_reader_late_beyond_the_limit_is_starving_and_how_long_says_who_goes_first() -> None:
    row = Row(req_id="r", state=0, arrival=NOW - 40, ttft=1.0, g=0.2, ntok=0,
              last_read=-math.inf, tokens=30, blocks=2, pending=0, cached=0,
              report_t=math.nan, report_buf=0.0, report_paused=False, report_g=0.2)  # fmt: skip
    rd = reader_at(row, NOW, 1.0, 5.0)
    assert rd.due == NOW - 39 and starving(row, rd, NOW, 30.0) == pytest.approx(39.0)
    assert starving(row, rd, NOW, 60.0) == -math.inf
