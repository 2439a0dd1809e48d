"""vLLM's side of a benchmark run: its counters and histograms, and the time it had requests."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.engine_metrics import BusyClock, EngineMetrics


class _Engine:
    """A real HTTP server on 127.0.0.1 whose /metrics says what the test sets."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.generated = 0.0
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    f'vllm:num_requests_running{{engine="0"}} {engine.running}\n'
                    f'vllm:num_requests_waiting{{engine="0"}} {engine.waiting}\n'
                    f'vllm:generation_tokens_total{{engine="0"}} {engine.generated}\n'
                    'vllm:num_preemptions_total{engine="0"} 3.0\n'
                    'vllm:request_queue_time_seconds_bucket{le="1.0"} 4.0\n'
                    'vllm:request_queue_time_seconds_bucket{le="+Inf"} 4.0\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def engine() -> Iterator[_Engine]:
    e = _Engine()
    yield e
    e.server.shutdown()


def test_counters_are_read_and_differenced(engine: _Engine) -> None:
    engine.generated = 100.0
    before = EngineMetrics.scrape(engine.url)
    engine.generated = 350.0
    side = EngineMetrics.scrape(engine.url).minus(before).summary()
    assert side["generation_tokens"] == 250.0
    assert side["preemptions"] == 0.0  # unchanged over the run
    assert math.isnan(side["prompt_tokens"])  # not reported: unknown, not zero
    assert math.isnan(EngineMetrics.scrape("http://127.0.0.1:9").summary()["generation_tokens"])


def test_the_busy_clock_counts_only_time_with_requests_and_the_tokens_over_time(
        engine: _Engine) -> None:  # fmt: skip
    with BusyClock([engine.url], period_s=0.05) as clock:
        time.sleep(0.5)  # idle
        engine.waiting = 2  # queued only: busy too
        time.sleep(0.5)
        engine.waiting, engine.running = 0, 1
        engine.generated = 1000.0  # 1,000 tokens within the third half-second
        time.sleep(0.5)
        engine.running = 0
        time.sleep(0.5)
    assert clock.samples >= 10
    assert 0.6 <= clock.busy_s <= 1.4  # the second and third half-seconds, one sample's slack
    assert clock.rate(0.0, 0.9) == 0.0
    assert clock.rate(0.0, 10.0) == pytest.approx(1000.0 / clock.series[-1][0], rel=0.2)
    assert math.isnan(clock.rate(5.0, 10.0))  # no samples there


def test_an_engine_without_the_gauges_is_never_busy() -> None:
    with BusyClock(["http://127.0.0.1:9"], period_s=0.05) as clock:
        time.sleep(0.3)
    assert clock.busy_s == 0.0
