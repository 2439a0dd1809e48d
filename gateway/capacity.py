"""What one upstream can serve, learned from what the gateway sees of it. Sans-I/O.

The gateway knows nothing of an engine's internals (batch limit, KV cache, scheduler). It sees
tokens arrive on the streams it holds open and how many it holds open. From that alone it
learns two curves, per upstream:

* **per-stream token latency at concurrency k**, ``L(k) = a + b·k`` seconds per token. Fitted
  by exponentially weighted least squares on windows of ``window_s``: in a window where on
  average ``k̄`` requests were in flight and ``n`` tokens arrived, one stream saw a token every
  ``k̄·window_s / n`` seconds. The line covers both kinds of engine it must: a continuous-batching
  engine (vLLM, SGLang: ``b`` small, a step serves everyone) and a one-slot server
  (llama-cpp-python: ``a ≈ 0``, ``b`` = its per-token time, since requests take turns).
  ``1 / L(k)`` is the rate each stream gets; ``k / L(k)`` the engine's throughput.
* **time to first token at concurrency k** (the requests already in flight when one is opened),
  an average per k. A batching engine answers quickly at any k; a one-slot server makes a
  newcomer wait for the stream ahead of it, and this curve is how the gateway finds out.

Until the data pin ``b`` down (every window at one concurrency), ``b`` is assumed to be
``optimism`` × the observed latency per stream — optimistic, so the gateway tries one more
stream and measures what it costs (the only way to learn a curve online); a k never observed
takes the TTFT of the highest k below it that was, scaled by ``(k + 1)`` (pessimistic there:
routing must not prefer a busy replica's guess to an idle one's measurement).

It also keeps the **token rate at each concurrency** as measured (tokens over time, per rounded
``k̄``, decayed like the line), because one line cannot tell where an engine's throughput stops
growing: a continuous-batching engine's rate rises with ``k`` up to its batch or KV limit and is
flat beyond (the rest wait in its own queue), a one-slot server's is flat from ``k = 1``.
:meth:`saturated` answers whether more in flight would still raise the rate — the gateway holds
a stream only where it would not, so holding never costs token throughput. Unmeasured
concurrencies are explored a step at a time above the highest one measured (a quarter more,
at least one): holding is believed only once a higher concurrency has been seen to give no
more. A step, not a doubling: the requests sent beyond what was measured are untested (the
engine may queue every one of them in its own order), and the rate at the top is the noisiest
of all, so a doubling whenever noise puts the best rate there sent a whole queue into the
engine's at once (measured: 84 requests in one plan, vLLM's waiting queue 6 → 96).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CapacityConfig", "CapacityModel"]


@dataclass(frozen=True, slots=True)
class CapacityConfig:
    window_s: float = 0.5  # one throughput sample per window with requests in flight
    half_life_s: float = 30.0  # older samples weigh half as much per half-life
    optimism: float = 0.05  # b assumed while unidentified, as a share of the latency per stream
    max_latency_s: float = 10.0  # a stalled engine's per-token latency is read as this
    ttft_alpha: float = 0.3  # EWMA weight of a new time-to-first-token sample
    default_latency_s: float = 0.05  # per-token latency before any measurement
    default_ttft_s: float = 0.2  # time to first token before any measurement
    min_rate_time_s: float = 1.0  # a concurrency's token rate counts once measured this long
    explore_share: float = 0.25  # explore this share above the highest concurrency measured
    # A queue delay measured at a concurrency stops the gateway sending more there until one
    # request tests it again: after as long as the delay itself, doubling each time a test finds
    # it again, at most this long (CapacityModel.queueing_s).
    queueing_memory_s: float = 120.0


class CapacityModel:
    """One upstream's learned capacity. Feed it :meth:`in_flight` changes and :meth:`tokens`;
    ask :meth:`token_latency_s` and :meth:`ttft_s`. Every method takes ``now_s``."""

    def __init__(self, config: CapacityConfig | None = None, now_s: float = 0.0) -> None:
        self.config = config or CapacityConfig()
        self._k = 0  # requests in flight now
        self._window_start_s = now_s
        self._last_change_s = now_s
        self._k_area = 0.0  # ∫ k dt over the open window
        self._tokens = 0  # tokens received in the open window
        # Weighted sums for least squares of L on k.
        self._w = self._wk = self._wkk = self._wl = self._wkl = 0.0
        self._updated_s = now_s
        self._ttft: dict[int, float] = {}
        # The latest first-token delay at each concurrency above 0, for queueing_s:
        # k_before -> (delay, when (None: unknown), tests in a row that found a queue).
        self._delay: dict[int, tuple[float, float | None, int]] = {}
        self._resume_ttft_s: float | None = None
        # Token rate by rounded concurrency: decayed (tokens, seconds, last update).
        self._rate: dict[int, list[float]] = {}
        self.samples = 0

    # -- inputs ---------------------------------------------------------------------------------

    def in_flight(self, k: int, now_s: float) -> None:
        """The number of requests open on this upstream changed to ``k``."""
        self._advance(now_s)
        self._k = max(k, 0)

    def tokens(self, n: int, now_s: float) -> None:
        """``n`` tokens arrived (on any stream of this upstream)."""
        self._advance(now_s)
        self._tokens += n

    def first_token(self, delay_s: float, k_before: int, resumed: bool = False,
                    now_s: float | None = None) -> None:  # fmt: skip
        """A request opened with ``k_before`` others in flight got its first token after
        ``delay_s`` (``resumed``: a parked stream's continuation), at ``now_s`` if given."""
        alpha = self.config.ttft_alpha
        if resumed:
            prev = self._resume_ttft_s
            self._resume_ttft_s = delay_s if prev is None else prev + alpha * (delay_s - prev)
            return
        prev = self._ttft.get(k_before)
        self._ttft[k_before] = delay_s if prev is None else prev + alpha * (delay_s - prev)
        if k_before > 0:
            idle = self._ttft.get(0, self.config.default_ttft_s)
            last = self._delay.get(k_before)
            found = delay_s - idle > self.config.window_s  # a wait the model can resolve
            strikes = (last[2] + 1 if last else 1) if found else 0
            self._delay[k_before] = (delay_s, now_s, strikes)

    def _advance(self, now_s: float) -> None:
        cfg = self.config
        if now_s > self._last_change_s:
            self._k_area += self._k * (now_s - self._last_change_s)
            self._last_change_s = now_s
        span = now_s - self._window_start_s
        if span < cfg.window_s:
            return
        k_mean = self._k_area / span if span > 0 else 0.0
        if k_mean >= 0.5:
            latency = (k_mean * span / self._tokens if self._tokens
                       else cfg.max_latency_s)  # fmt: skip
            self._add(k_mean, min(latency, cfg.max_latency_s), now_s)
            self._add_rate(round(k_mean), self._tokens, span, now_s)
        self._window_start_s = now_s
        self._k_area = 0.0
        self._tokens = 0

    def _add(self, k: float, latency_s: float, now_s: float) -> None:
        decay = 0.5 ** ((now_s - self._updated_s) / self.config.half_life_s)
        self._updated_s = now_s
        self._w = self._w * decay + 1.0
        self._wk = self._wk * decay + k
        self._wkk = self._wkk * decay + k * k
        self._wl = self._wl * decay + latency_s
        self._wkl = self._wkl * decay + k * latency_s
        self.samples += 1

    def _add_rate(self, k: int, tokens: int, span_s: float, now_s: float) -> None:
        entry = self._rate.setdefault(k, [0.0, 0.0, now_s])
        decay = 0.5 ** ((now_s - entry[2]) / self.config.half_life_s)
        entry[0] = entry[0] * decay + tokens
        entry[1] = entry[1] * decay + span_s
        entry[2] = now_s

    # -- estimates ------------------------------------------------------------------------------

    def line(self) -> tuple[float, float]:
        """``(a, b)`` of ``L(k) = a + b·k``, seconds per token."""
        cfg = self.config
        if self._w <= 0.0:
            base = cfg.default_latency_s
            return base * (1 - cfg.optimism), base * cfg.optimism
        k_mean, l_mean = self._wk / self._w, self._wl / self._w
        var = self._wkk / self._w - k_mean * k_mean
        # Spread of k below ~0.25 (all windows at one concurrency): b is not identified.
        if var > 0.0625:
            b = (self._wkl / self._w - k_mean * l_mean) / var
            b = max(b, 0.0)  # more requests never make each one faster
            a = l_mean - b * k_mean
            if a < 0.0:  # all cost scales with k (a one-slot server): keep the line through 0
                a, b = 0.0, l_mean / k_mean
            return a, b
        b = cfg.optimism * l_mean / max(k_mean, 1.0)
        return max(l_mean - b * k_mean, 0.0), b

    def token_latency_s(self, k: int, flat: bool = False) -> float:
        """Seconds between two tokens of one stream when ``k`` requests are in flight: the line;
        with ``flat``, never less than ``k`` streams' share of the best token rate measured (as
        if the rate grew no further). ``flat`` is what admission without a test relies on:
        fitted on windows that all lie near one concurrency (a gateway holding an engine at its
        plateau), the line's slope is noise or the optimistic guess, and one more stream looks
        free to everyone. Valuation keeps the line: on an engine bound by its KV cache a
        newcomer waits rather than slowing the others, and the share would charge them a loss
        they do not have (measured on the development split: holding by the share everywhere
        cost QoE and throughput)."""
        a, b = self.line()
        k = max(k, 1)
        latency = a + b * k
        rates = self.rates()
        if flat and rates and max(rates.values()) > 0.0:
            latency = max(latency, k / max(rates.values()))
        return min(max(latency, 1e-4), self.config.max_latency_s)

    def throughput_tok_s(self, k: int) -> float:
        """Tokens per second over all streams at concurrency ``k``."""
        return max(k, 1) / self.token_latency_s(k)

    @property
    def ttft_measured(self) -> bool:
        """Whether any first token has been timed here (else :meth:`ttft_s` is the default)."""
        return bool(self._ttft)

    def ttft_s(self, k_before: int) -> float:
        """Expected seconds to the first token of a request opened with ``k_before`` in flight."""
        if k_before in self._ttft:
            return self._ttft[k_before]
        below = [k for k in self._ttft if k < k_before]
        if below:
            # Scaled by the streams ahead: an idle replica's measured TTFT must not lose to a
            # busy one's guess (a one-slot server makes a newcomer wait for them all).
            k = max(below)
            return self._ttft[k] * (k_before + 1) / (k + 1)
        above = [k for k in self._ttft if k > k_before]
        return self._ttft[min(above)] if above else self.config.default_ttft_s

    def queueing_s(self, k_before: int, now_s: float | None = None) -> float:
        """How much longer than on an idle upstream a request opened with ``k_before`` in flight
        was last measured to wait for its first token, at the highest concurrency timed at or
        below ``k_before`` (0 where none is timed). Measured only, never scaled: it tells an
        engine that queues newcomers behind the streams it serves (a one-slot server) from one
        that shares its steps among them, and a guess must not decide that.

        A measurement lasts as long as the delay it measured (at least ``window_s``), doubled for
        each test in a row before it that found a queue (a wait over ``window_s``), at most
        ``queueing_memory_s``. Why: admission sends nothing where this says the engine
        queues, so nothing but a test can refute it. A batching engine's queue after a burst
        drains within about the delay it caused, and the first test then finds none; a one-slot
        server's queue is there at every test, which come half as often each time (each costs
        one request a wait in the engine's queue instead of the gateway's)."""
        if 0 not in self._ttft:
            return 0.0
        idle = self._ttft[0]
        cfg = self.config
        live = []
        for k, (delay, at, strikes) in self._delay.items():
            if k > k_before:
                continue
            held = max(delay - idle, cfg.window_s) * 2 ** max(strikes - 1, 0)
            lasts = min(held, cfg.queueing_memory_s)
            if now_s is None or at is None or now_s - at < lasts:
                live.append((k, delay))
        return max(max(live)[1] - idle, 0.0) if live else 0.0

    def resume_ttft_s(self, k_before: int) -> float:
        """Expected seconds to the first token of a continuation (a resumed stream)."""
        if self._resume_ttft_s is not None:
            return max(self._resume_ttft_s, self.ttft_s(k_before))
        return self.ttft_s(k_before)

    def rates(self) -> dict[int, float]:
        """Measured token rate (all streams, tokens/s) by concurrency."""
        least = self.config.min_rate_time_s
        return {k: tok / t for k, (tok, t, _) in sorted(self._rate.items()) if t >= least}

    def frontier(self) -> int | None:
        """The most requests in flight the token rate may be tested at now: one step above the
        highest concurrency measured (``explore_share`` of it, at least one request); None
        before any rate is measured."""
        rates = self.rates()
        return self._step_above(max(rates)) if rates else None

    def _step_above(self, top: int) -> int:
        return top + max(1, math.ceil(self.config.explore_share * top))

    def saturated(self, k: int, share: float) -> bool:
        """Whether ``k`` in flight already get ``share`` of the best token rate measured here,
        with a higher concurrency seen to give no more — one more stream would add (almost)
        nothing to the engine's throughput. False while that is not known: below a concurrency
        at which the rate was seen to flatten, or up to one step above the highest one measured
        (``explore_share`` of it, at least one request: the curve is explored, not guessed, and
        no more than a step of requests is ever untested)."""
        rates = self.rates()
        if not rates:
            return False
        flat = self.plateau(share)
        return k >= (flat if flat is not None else self._step_above(max(rates)))

    def plateau(self, share: float) -> int | None:
        """The first concurrency whose token rate is at least ``share`` of the mean rate measured
        at the concurrencies above it (each weighted by how long it was measured): from there on
        more in flight was seen to give no more. None while no concurrency is. The mean, not the
        best single rate: on a flat curve the best is the noisiest sample, so a plateau set
        against it moved up with every lucky window (measured on the development split: from 22
        to 50 in flight in one run, while vLLM ran 30–43 with its KV cache full and queued the
        rest)."""
        measured = [(k, tok / t, t) for k, (tok, t, _) in sorted(self._rate.items())
                    if t >= self.config.min_rate_time_s]  # fmt: skip
        above_tok = above_t = 0.0
        found = None
        for k, rate, t in reversed(measured):
            if above_t > 0.0 and rate >= share * above_tok / above_t:
                found = k
            above_tok += rate * t
            above_t += t
        return found

    def capacity(self, tds_tok_s: float) -> int:
        """The most requests in flight at which each still gets ``tds_tok_s`` tokens/s."""
        a, b = self.line()
        if b <= 0.0:
            return 1_000_000
        k = math.floor((1.0 / tds_tok_s - a) / b)
        return max(k, 0)
