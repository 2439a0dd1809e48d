"""The serve gain of :func:`core.qoe.predict_serve_gain`, for many requests at once (numpy).

Same closed form, same arguments as arrays, relative to each request's arrival. The arguments
broadcast, so ``andes`` values its candidates at every candidate batch size in one call
(``latency`` of shape ``(B, 1)`` against per-request rows); the result is elementwise, so a
request's value does not depend on what else is in the call. The scalar function stays the
reference (``tests/engine/policy/test_horizon.py`` checks the two agree).
"""

from __future__ import annotations

import numpy as np

__all__ = ["serve_gain"]

_FAR = 1e18  # stands in for an infinite reader horizon (paused reader): no token is ever read


def serve_gain(
    h: np.ndarray,  # horizon, seconds since arrival
    ttft: np.ndarray,  # spec ttft_s
    g: np.ndarray,  # 1 / spec tds_tok_s
    n: np.ndarray,  # tokens delivered so far
    d1: np.ndarray,  # first new token's arrival, seconds since arrival
    need: np.ndarray,  # when the reader needs the next token, seconds since arrival (±inf allowed)
    g_r: np.ndarray,  # 1 / the reader's pace
    latency: float | np.ndarray,  # per-token latency L of the batch
) -> np.ndarray:
    """Per request, ``predict_serve_gain`` (QoE points gained at ``h`` by serving, ≥ 0).

    The three lines of the closed form (``core.qoe``) have slopes ``max(L, g_r)``, ``g_r`` and
    ``g``. In the common case — a batch faster than the reader, who reads at the pace the QoE
    expects — all three are equal and the sum is one arithmetic series; only the other requests
    take the general piecewise sum.
    """
    h, ttft, g, n, d1, need, g_r, latency = np.broadcast_arrays(
        h, ttft, g, n, d1, need, g_r, np.asarray(latency, dtype=float)
    )
    out = np.zeros(h.shape)
    same = (g_r == g) & (latency <= g_r)
    if same.any():
        out[same] = _one_slope(h[same], ttft[same], g[same], n[same], d1[same], need[same])
    rest = ~same
    if rest.any():
        out[rest] = _piecewise(h[rest], ttft[rest], g[rest], n[rest], d1[rest], need[rest],
                               g_r[rest], latency[rest])  # fmt: skip
    return out


def _one_slope(h, ttft, g, n, d1, need):  # type: ignore[no-untyped-def]
    """:func:`_piecewise` when every line has slope ``g``: ``Σ_{k=1}^{k_hi-1} max(a - g·k, 0)``
    with ``a`` the lowest intercept."""
    m = np.where(h < ttft, 0.0, np.floor((h - ttft) / g) + 1.0)
    denom = m * (h - ttft) - g * m * (m - 1.0) * 0.5
    k_hi = np.maximum(m - n + 1.0, 1.0)
    need = np.minimum(need, _FAR)
    a = np.minimum(np.minimum(h - d1 + g, h - np.maximum(d1, need) + g), h - ttft - (n - 1.0) * g)
    # Terms k = 1 .. end-1 are positive, end = min(k_hi, ceil(a / g)).
    end = np.minimum(k_hi, np.ceil(a / g))
    count = np.maximum(end - 1.0, 0.0)
    first = a - g
    last = a - g * (end - 1.0)
    total = np.where(count > 0, count * (first + last) * 0.5, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0.0, total / denom, 0.0)


def _piecewise(h, ttft, g, n, d1, need, g_r, latency):  # type: ignore[no-untyped-def]
    """The general closed form: the minimum of three lines, summed piecewise."""
    m = np.where(h < ttft, 0.0, np.floor((h - ttft) / g) + 1.0)
    denom = m * (h - ttft) - g * m * (m - 1.0) * 0.5
    k_hi = np.maximum(m - n + 1.0, 1.0)  # tokens k in [1, k_hi) are due before h

    need = np.minimum(need, _FAR)
    s1 = np.maximum(latency, g_r)
    a = np.stack([h - d1 + s1, h - np.maximum(d1, need) + g_r, h - ttft - (n - 1.0) * g])
    b = np.stack([-s1, -g_r, -g])  # all slopes < 0

    # Crossings of the three lines, cut to [1, k_hi): the minimum is one line between cuts.
    cuts = [np.ones_like(h), k_hi]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        db = b[i] - b[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(db != 0.0, (a[j] - a[i]) / db, 1.0)
        cuts.append(np.clip(np.ceil(x), 1.0, k_hi))
    edges = np.sort(np.stack(cuts), axis=0)

    total = np.zeros_like(h)
    for s in range(edges.shape[0] - 1):
        lo, hi = edges[s], edges[s + 1]
        mid = 0.5 * (lo + hi - 1.0)
        pick = np.argmin(a + b * mid, axis=0)
        aa = np.take_along_axis(a, pick[None], 0)[0]
        bb = np.take_along_axis(b, pick[None], 0)[0]
        end = np.minimum(hi, np.ceil(-aa / bb))
        count = np.maximum(end - lo, 0.0)
        first = np.maximum(aa + bb * lo, 0.0)
        last = np.maximum(aa + bb * (end - 1.0), 0.0)
        total += count * (first + last) * 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0.0, total / denom, 0.0)
