"""vLLM's side of a benchmark run, from its Prometheus ``/metrics``: what the engine did (tokens,
preemptions, prefix-cache hits) and how its own queue and first tokens went, so a result at the
reader is never read without the engine's. Shared by ``engine_grid.py`` and
``gateway_sched.py``.

:class:`BusyClock` also times how long the engine had requests (sampling vLLM's running and
waiting gauges twice a second): generated tokens over that time is the engine's token rate while
busy, which does not count the seconds a configuration left it idle or the ones its readers
spent reading the last buffered text.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from types import TracebackType

__all__ = ["BusyClock", "EngineMetrics"]


def _get(base_url: str) -> str | None:
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as resp:
            return str(resp.read().decode("utf-8", errors="replace"))
    except OSError:
        return None


@dataclass
class EngineMetrics:
    """vLLM's Prometheus metrics that matter here: counters and histograms, summed over labels."""

    counters: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # le -> count

    @classmethod
    def scrape(cls, base_url: str) -> EngineMetrics:
        text = _get(base_url)
        if text is None:
            return cls()
        m = cls()
        hist: dict[str, dict[float, float]] = {}
        for line in text.splitlines():
            if not line.startswith("vllm:"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            try:
                v = float(value)
            except ValueError:
                continue
            if name.endswith("_bucket"):
                le = name_labels.split('le="', 1)[1].split('"', 1)[0]
                h = hist.setdefault(name[: -len("_bucket")], {})
                bound = math.inf if le == "+Inf" else float(le)
                h[bound] = h.get(bound, 0.0) + v
            elif name.endswith("_total") or name.endswith("_count") or name.endswith("_sum"):
                m.counters[name] = m.counters.get(name, 0.0) + v
        m.buckets = {k: sorted(v.items()) for k, v in hist.items()}
        return m

    def minus(self, before: EngineMetrics) -> EngineMetrics:
        out = EngineMetrics()
        out.counters = {k: v - before.counters.get(k, 0.0) for k, v in self.counters.items()}
        for k, b in self.buckets.items():
            old = dict(before.buckets.get(k, []))
            out.buckets[k] = [(le, c - old.get(le, 0.0)) for le, c in b]
        return out

    def quantile(self, name: str, q: float) -> float:
        """The ``q`` quantile of histogram ``name`` (linear within its bucket; nan if empty)."""
        b = self.buckets.get(name)
        if not b or b[-1][1] <= 0:
            return math.nan
        total, lo, prev = b[-1][1], 0.0, 0.0
        for le, cum in b:
            if cum >= q * total:
                if math.isinf(le):
                    return lo
                frac = (q * total - prev) / (cum - prev) if cum > prev else 1.0
                return lo + (le - lo) * frac
            lo, prev = le, cum
        return lo

    def counter(self, *names: str) -> float:
        for n in names:
            if n in self.counters:
                return self.counters[n]
        return math.nan

    def summary(self) -> dict[str, float]:
        queries = self.counter("vllm:prefix_cache_queries_total")
        hits = self.counter("vllm:prefix_cache_hits_total")
        return {
            "engine_ttft_p50_s": self.quantile("vllm:time_to_first_token_seconds", 0.5),
            "engine_ttft_p99_s": self.quantile("vllm:time_to_first_token_seconds", 0.99),
            "queue_p50_s": self.quantile("vllm:request_queue_time_seconds", 0.5),
            "queue_p99_s": self.quantile("vllm:request_queue_time_seconds", 0.99),
            "preemptions": self.counter("vllm:num_preemptions_total"),
            "generation_tokens": self.counter("vllm:generation_tokens_total"),
            "prompt_tokens": self.counter("vllm:prompt_tokens_total"),
            "prefix_hit_rate": hits / queries if queries and queries > 0 else math.nan,
        }


class BusyClock:
    """A thread that samples vLLM's ``num_requests_running``, ``num_requests_waiting`` and
    ``generation_tokens_total`` every ``period_s`` on each of ``base_urls`` while in its
    ``with`` block. ``busy_s`` is the time any of them had a request (0 where none reports the
    gauges: another engine); :meth:`rate` the tokens generated per second between two moments
    of the block (seconds from its start)."""

    def __init__(self, base_urls: list[str], period_s: float = 0.5) -> None:
        self.base_urls = base_urls
        self.period_s = period_s
        self.busy_s = 0.0
        self.samples = 0
        self.series: list[tuple[float, float]] = []  # (seconds from the start, tokens so far)
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-clock", daemon=True)

    def __enter__(self) -> BusyClock:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.period_s):
            now = time.monotonic()
            gauges = [_gauges(_get(url)) for url in self.base_urls]
            if any(busy for busy, _ in gauges):
                self.busy_s += now - last
            tokens = [t for _, t in gauges]
            if all(t is not None for t in tokens):
                self.series.append((now - self._start, sum(tokens)))  # type: ignore[arg-type]
            self.samples += 1
            last = now

    def rate(self, from_s: float, to_s: float) -> float:
        """Tokens generated per second from ``from_s`` to ``to_s`` (the samples nearest inside
        that span; nan with fewer than two there)."""
        inside = [(t, n) for t, n in self.series if from_s <= t <= to_s]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return math.nan
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _gauges(text: str | None) -> tuple[bool, float | None]:
    """(whether the engine has a request, its generated tokens so far) from its metrics."""
    busy, tokens = False, None
    for line in (text or "").splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                    "vllm:generation_tokens_total"):  # fmt: skip
            try:
                value = float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
            if name == "vllm:generation_tokens_total":
                tokens = (tokens or 0.0) + value
            elif value > 0:
                busy = True
    return busy, tokens
