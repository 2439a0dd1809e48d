"""The vectorised serve gain agrees with the scalar reference in core.qoe."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from core.qoe import QoESpec, QoETracker, predict_serve_gain
from engine.policy.horizon import serve_gain


def test_vectorised_gain_equals_scalar() -> None:
    rng = random.Random(7)
    cases = []
    for _ in range(2000):
        spec = QoESpec(rng.choice([0.0, 0.5, 1.0, 2.0]), rng.uniform(1.0, 15.0))
        tr = QoETracker(spec, arrival_s=100.0)
        t = 100.0
        for _ in range(rng.randint(0, 30)):
            t += rng.uniform(0.0, 1.5)
            tr.add(t)
        now = t + rng.uniform(0.0, 4.0)
        first = rng.choice([None, rng.uniform(0.0, 2.0)])
        reader = rng.choice([None, None, now + rng.uniform(-2.0, 8.0), math.inf])
        tds = None if reader is None else rng.uniform(1.0, 10.0)
        cases.append((tr, now, rng.uniform(0.0, 10.0), first, reader, tds))
    lat = 0.07
    for tr, now, dt, first, reader, tds in cases:
        expected = predict_serve_gain(
            tr, now, dt, lat, first, reader_horizon_s=reader, reader_tds_tok_s=tds
        )
        g = 1.0 / tr.spec.tds_tok_s
        if reader is not None:
            need, g_r = reader - tr.arrival_s, 1.0 / tds
        else:
            need = tr.last_read_s + g if tr.num_tokens else -math.inf
            g_r = g
        rel = now - tr.arrival_s
        got = serve_gain(
            *(np.array([v]) for v in (rel + dt, tr.spec.ttft_s, g, tr.num_tokens)),
            np.array([rel + (lat if first is None else first)]),
            np.array([need]),
            np.array([g_r]),
            lat,
        )[0]
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
