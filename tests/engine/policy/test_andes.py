from __future__ import annotations

import pytest
from policy_snapshots import BLOCK, capacity, make_request

from core.slack import SlackRecord
from engine.policy import Capacity, ReqState, get_policy
from engine.policy.andes import AndesPolicy, AndesReference

NOW = 100.0


def report(slack_s: float, *, paused: bool = False, age_s: float = 0.0, tds: float = 5.0):
    """A slack report measured ``age_s`` ago that said ``slack_s`` of reading was buffered (of
    at least the 16 tokens :func:`streaming` delivers)."""
    buffered = round(slack_s * tds)
    delivered = max(16, buffered)
    return SlackRecord(stream_id="s", delivered=delivered, consumed=delivered - buffered,
                       tds_tok_s=tds, paused=paused, t_s=NOW - age_s)  # fmt: skip


def streaming(req_id: str, arrival: float, state: ReqState, slack=None, n: int = 16):
    # n tokens delivered on time: 32 + 16 tokens = 3 blocks each.
    return make_request(
        req_id,
        arrival,
        state,
        delivered_at=[arrival + 1.0 + k * 0.2 for k in range(n)],
        slack=slack,
    )


def test_when_nothing_binds_the_step_is_left_to_the_engine() -> None:
    reqs = [make_request(f"w{i}", float(i)) for i in range(4)]
    andes = get_policy("andes")
    # None: the engine's own order, which is FCFS (what the fcfs policy would list).
    assert andes.schedule(10.0, reqs, capacity(kv_blocks=100)) is None
    assert not andes.last_triggered
    # One block short: the cache binds, and the policy decides.
    assert andes.schedule(10.0, reqs, capacity(kv_blocks=7)) is not None
    assert andes.last.binds == ("kv",)


def test_prefers_the_request_about_to_stall_over_one_with_large_slack() -> None:
    reqs = [
        streaming("relaxed", 0.0, ReqState.PREEMPTED, slack=report(30.0)),  # older: FCFS's pick
        streaming("stalling", 1.0, ReqState.PREEMPTED, slack=report(0.1)),
    ]
    assert get_policy("fcfs").schedule(NOW, reqs, capacity(kv_blocks=3)).run == ["relaxed"]
    andes = get_policy("andes")
    assert andes.schedule(NOW, reqs, capacity(kv_blocks=3)).run == ["stalling"]
    assert andes.last_triggered


def test_paused_reader_yields_to_a_waiting_request_and_resumes_with_its_reader() -> None:
    andes = get_policy("andes", min_run_steps=0, min_run_s=0.0, decide_every_s=0.0)
    # Hidden with more than the resume cushion (5 s) buffered: it needs nothing while away.
    paused = streaming("tab", 0.0, ReqState.RUNNING, slack=report(6.0, paused=True))
    newcomer = make_request("new", NOW - 1.0, prompt=40)  # 3 blocks, its first token due now
    d = andes.schedule(NOW, [paused, newcomer], capacity(kv_blocks=3))
    assert d.run == ["new"] and d.preempt == ["tab"]

    # The reader comes back having read it all; the newcomer's reader has plenty.
    back = streaming("tab", 0.0, ReqState.PREEMPTED, slack=report(0.0))
    served = make_request(
        "new", NOW - 0.5, ReqState.RUNNING, prompt=40, delivered_at=[NOW - 0.4], slack=report(20.0)
    )
    served.kv_blocks = 3
    d = andes.schedule(NOW, [back, served], capacity(kv_blocks=3))
    assert d.run == ["tab"] and d.preempt == ["new"]


def test_a_paused_reader_is_served_until_its_resume_cushion_is_buffered() -> None:
    cap = capacity(kv_blocks=3)
    relaxed = streaming("relaxed", 0.0, ReqState.PREEMPTED, slack=report(30.0))
    # Hidden with 1 s buffered: it might come back now, so it is valued as a reader with 1 s left.
    short = streaming("tab", 1.0, ReqState.PREEMPTED, slack=report(1.0, paused=True))
    assert get_policy("andes").schedule(NOW, [relaxed, short], cap).run == ["tab"]
    # Without a cushion, a hidden reader never needs a token while away: FCFS's order stands.
    no_cushion = get_policy("andes", resume_cushion_s=0.0)
    assert no_cushion.schedule(NOW, [relaxed, short], cap).run == ["relaxed"]


def test_a_report_before_the_first_token_says_nothing_about_the_reader() -> None:
    cap = capacity(kv_blocks=3)
    relaxed = streaming("relaxed", 0.0, ReqState.RUNNING, slack=report(30.0))
    # As the gateway reports before the first token:
    empty = SlackRecord("new", 0, 0, 5.0, False, NOW)
    # Its first token is due at its ttft, 0.9 s from now: waiting that long costs it nothing, so
    # nobody is preempted for it yet (an empty buffer taken literally would make it due now).
    fresh = make_request("new", NOW - 0.1, ReqState.WAITING, prompt=40, slack=empty)
    d = get_policy("andes").schedule(NOW, [relaxed, fresh], cap)
    assert d.run == ["relaxed"] and d.preempt == []
    # Once its ttft is up, it is due, and the relaxed reader yields.
    due = make_request("new", NOW - 1.0, ReqState.WAITING, prompt=40, slack=empty)
    d = get_policy("andes").schedule(NOW, [relaxed, due], cap)
    assert d.run == ["new"] and d.preempt == ["relaxed"]


def test_stale_slack_falls_back_to_server_inference() -> None:
    cap = capacity(kv_blocks=3)
    # Both delivered 16 tokens on time; by the tracker both readers need their next token now.
    # "other" reported 0.02 s buffered: due before a token could reach it (0.05 s per token).
    other = streaming("other", NOW - 4.2, ReqState.PREEMPTED, slack=report(0.02))
    fresh = streaming("tab", NOW - 4.2, ReqState.RUNNING, slack=report(6.0, paused=True))
    assert get_policy("andes").schedule(NOW, [fresh, other], cap).run == ["other"]
    # The same paused report, 2 s old: ignored; the tracker says the reader is about to stall.
    stale = streaming("tab", NOW - 4.2, ReqState.RUNNING, slack=report(6.0, paused=True, age_s=2))
    assert get_policy("andes").schedule(NOW, [stale, other], cap).run == ["tab"]
    # A longer staleness limit makes the same report count again.
    lenient = get_policy("andes", slack_staleness_s=5.0)
    assert lenient.schedule(NOW, [stale, other], cap).run == ["other"]


def test_a_just_admitted_request_is_not_preempted() -> None:
    def contest(andes, now: float) -> list[str]:
        running = streaming("a", 0.0, ReqState.RUNNING, slack=report(30.0, age_s=NOW - now))
        urgent = streaming("b", now - 4.2, ReqState.PREEMPTED, slack=report(0.0, age_s=NOW - now))
        return andes.schedule(now, [running, urgent], capacity(kv_blocks=3)).run

    first = streaming("a", 0.0, ReqState.PREEMPTED, slack=report(0.1))
    # "a" is seen parked, then on the device: admitted (by the policy or by the engine itself).
    by_steps = get_policy("andes", min_run_steps=4, min_run_s=0.0, admission_headroom=False,
                        decide_every_s=0.0)  # each call a new situation: no reuse
    assert by_steps.schedule(NOW, [first], capacity(kv_blocks=3)) is None  # it fits: engine's
    for _ in range(4):  # protected for min_run_steps steps, from the one that sees it admitted
        assert contest(by_steps, NOW) == ["a"]
    assert contest(by_steps, NOW) == ["b"]

    by_time = get_policy("andes", min_run_steps=0, min_run_s=2.0, admission_headroom=False,
                       decide_every_s=0.0)
    by_time.schedule(NOW, [first], capacity(kv_blocks=3))
    assert contest(by_time, NOW) == ["a"]  # protected for min_run_s seconds
    assert contest(by_time, NOW + 1.0) == ["a"]
    assert contest(by_time, NOW + 2.5) == ["b"]


def test_refiner_refuses_a_preemption_whose_recompute_costs_more_than_it_gains() -> None:
    def cap(prefill_s: float) -> Capacity:
        return Capacity(
            kv_blocks=6, block_size=BLOCK, max_batch=2, token_latency_s=lambda b: 0.05,
            prefill_latency_s=lambda tokens: prefill_s,
        )  # fmt: skip

    reqs = [
        streaming("keep", 0.0, ReqState.RUNNING, slack=report(0.0)),
        streaming("relaxed", 0.0, ReqState.RUNNING, slack=report(4.0)),
        streaming("stalling", 1.0, ReqState.PREEMPTED, slack=report(0.0)),
    ]
    # No growth headroom here (in a cache this small it alone would forbid the admission), and
    # no starvation floor (these readers stalled long ago; a starving one skips the value test).
    opts = {"admission_headroom": False, "starvation_s": 1000.0}
    cheap = get_policy("andes", **opts).schedule(NOW, reqs, cap(0.0))
    assert cheap.preempt == ["relaxed"] and "stalling" in cheap.run
    # A 2 s recompute stalls the whole batch for 2 s when "relaxed" comes back, and "stalling"
    # itself gains less (its own 2 s recompute comes first).
    costly = get_policy("andes", **opts).schedule(NOW, reqs, cap(2.0))
    assert costly.preempt == [] and set(costly.run) == {"keep", "relaxed"}
    naive = get_policy("andes", overhead_aware=False, **opts)
    naive = naive.schedule(NOW, reqs, cap(2.0))
    assert naive.preempt == ["relaxed"]


def test_transient_queueing_that_is_not_due_yet_preempts_nobody() -> None:
    # Memory is full and a newcomer waits, but its first token is not due for 0.5 s: waiting
    # costs it no QoE yet, so andes leaves it waiting rather than preempt a relaxed stream.
    relaxed = streaming("relaxed", 0.0, ReqState.RUNNING, slack=report(30.0))
    newcomer = make_request("new", NOW - 0.5)
    andes = get_policy("andes", min_run_steps=0)
    d = andes.schedule(NOW, [relaxed, newcomer], capacity(kv_blocks=3))
    assert d.run == ["relaxed"] and d.preempt == []
    # Once it is due, the relaxed stream yields to it.
    d = andes.schedule(NOW + 0.5, [relaxed, newcomer], capacity(kv_blocks=3))
    assert d.run == ["new"] and d.preempt == ["relaxed"]


def test_refiner_frees_only_the_room_due_admissions_need() -> None:
    # Three relaxed streams fill the cache; one newcomer is due, two more are not yet.
    running = [streaming(f"r{i}", float(i), ReqState.RUNNING, slack=report(30.0)) for i in range(3)]
    due = make_request("due", NOW - 1.0, prompt=40)  # 3 blocks each
    soon = [make_request(f"soon{i}", NOW - 0.2, prompt=40) for i in range(2)]
    andes = get_policy("andes", min_run_steps=0, admission_headroom=False)
    d = andes.schedule(NOW, [*running, due, *soon], capacity(kv_blocks=9))
    assert len(d.preempt) == 1 and "due" in d.run
    assert not {"soon0", "soon1"} & set(d.run)


@pytest.mark.parametrize("policy", [AndesPolicy, AndesReference])
def test_admission_headroom_is_the_growth_until_the_next_decision(policy) -> None:
    """Ten running streams fill 30 of 33 blocks; a 2-block newcomer fits in the 3 free ones.
    Mid-block (42 tokens: 7 steps to the next block) nobody opens a block before the policy's
    next full decision, so it is admitted at once; at a block boundary (48 tokens) all ten open
    one at their next token, so it waits (it is not due: nobody is parked for it)."""
    def run(n: int):
        running = [make_request(f"r{i}", NOW - 10 + i * 0.1, ReqState.RUNNING,
                                delivered_at=[NOW - 9 + i * 0.1 + k * 0.2 for k in range(n)])
                   for i in range(10)]  # fmt: skip
        waiting = [make_request(f"w{i}", NOW - 0.1) for i in range(2)]
        return policy(min_run_steps=0).schedule(NOW, [*running, *waiting],
                                                capacity(kv_blocks=33))  # fmt: skip

    mid_block = run(10)
    assert mid_block.run[-1] == "w0" and len(mid_block.run) == 11 and not mid_block.preempt
    at_boundary = run(16)
    assert len(at_boundary.run) == 10 and not {"w0", "w1"} & set(at_boundary.run)
    assert not at_boundary.preempt


def test_starvation_floor_admits_a_starving_request_one_at_a_time() -> None:
    # Two long prompts (8 blocks) waited 60 s: per block they are worth far less than the dense
    # newcomers (1 block each), so the knapsack alone would never pick them.
    starving = [make_request(f"long{i}", NOW - 60.0 + i, prompt=128) for i in range(2)]
    newcomers = [make_request(f"new{i}", NOW - 1.0, prompt=8) for i in range(8)]
    cap = capacity(kv_blocks=8)
    assert (
        "long0"
        not in get_policy("andes", starvation_s=100.0)
        .schedule(NOW, [*starving, *newcomers], cap)
        .run
    )
    andes = get_policy("andes")  # starvation_s = 30
    d = andes.schedule(NOW, [*starving, *newcomers], cap)
    assert d.run == ["long0"]  # the longest-starving one first
    # While it runs, the next starving request waits its turn (the floor takes one at a time),
    # and the running one is kept although it is the least dense.
    long0 = make_request("long0", NOW - 60.0, ReqState.RUNNING, prompt=128, delivered_at=[NOW])
    d = andes.schedule(NOW + 0.1, [long0, starving[1], *newcomers], capacity(kv_blocks=16))
    assert "long0" in d.run and "long1" not in d.run


def test_latency_trigger_fires_only_when_the_batch_is_slower_than_its_strictest_reader() -> None:
    reqs = [streaming(f"r{i}", float(i), ReqState.RUNNING, slack=report(0.0)) for i in range(4)]

    def cap(latency_per_request: float) -> Capacity:
        return Capacity(
            kv_blocks=100, block_size=BLOCK, max_batch=4,
            token_latency_s=lambda b: b * latency_per_request,
        )  # fmt: skip

    andes = get_policy("andes")
    andes.schedule(NOW, reqs, cap(0.01))  # 0.04 s per token < 1/5 s: FCFS
    assert not andes.last_triggered
    andes.schedule(NOW, reqs, cap(0.125))  # 0.5 s per token: the knapsack weighs batch sizes
    assert andes.last_triggered
    off = get_policy("andes", latency_trigger=False)
    off.schedule(NOW, reqs, cap(0.125))
    assert not off.last_triggered


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("horizon_s", 0),
        ("horizon_s", float("inf")),
        ("slack_staleness_s", -1.0),
        ("batch_fractions", ()),
        ("batch_fractions", (0.5, 1.5)),
        ("min_run_steps", -2),
        ("min_run_s", -1.0),
        ("resume_cushion_s", float("inf")),
        ("starvation_s", 0),
        ("overhead_aware", "no"),
    ],
)
def test_bad_config_is_rejected_with_the_value(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        get_policy("andes", **{option: value})
    with pytest.raises(ValueError, match="'horizon'"):
        get_policy("andes", horizon=3)


def test_a_decision_is_reused_while_nothing_it_rests_on_changes() -> None:
    andes = get_policy("andes", decide_every_s=0.1)
    relaxed = streaming("relaxed", 0.0, ReqState.RUNNING, slack=report(30.0))
    waiting = make_request("w", NOW - 0.5, prompt=40)  # the cache is full: it cannot fit
    cap = capacity(kv_blocks=3)
    first = andes.schedule(NOW, [relaxed, waiting], cap)
    assert first is not None and not andes.last.reused
    # 50 ms later, the same situation: the last decision stands (no valuation, no packing).
    again = andes.schedule(NOW + 0.05, [relaxed, waiting], cap)
    assert andes.last.reused and again == first
    # Room for a waiting request (the running one finished; another waits): decided at once.
    other = make_request("w2", NOW - 0.2, prompt=40)
    d = andes.schedule(NOW + 0.06, [waiting, other], cap)
    assert d is not None and andes.last.binds == ("kv",) and not andes.last.reused
    assert d.run == ["w"]
    # And every decide_every_s anyway.
    andes.schedule(NOW + 0.07, [relaxed, waiting], cap)
    andes.schedule(NOW + 0.2, [relaxed, waiting], cap)
    assert not andes.last.reused


def test_a_smaller_batch_is_tried_only_where_it_keeps_the_token_rate() -> None:
    from engine.policy.andes.algorithm import batch_sizes
    from engine.policy.andes.config import AndesConfig

    def cap(latency):  # type: ignore[no-untyped-def]
        return Capacity(kv_blocks=10_000, block_size=BLOCK, max_batch=100, token_latency_s=latency)

    cfg = AndesConfig()
    # Compute-bound (latency in proportion to the batch): every fraction keeps the token rate.
    assert batch_sizes(100, cap(lambda b: 0.002 * b), cfg, ("latency",)) == [25, 50, 75, 100]
    # A fixed cost per step (GPU-like): a smaller batch would just make fewer tokens.
    assert batch_sizes(100, cap(lambda b: 0.1 + 0.001 * b), cfg, ("latency",)) == [100]
    # The floor is the operator's: 0 lets the knapsack weigh every fraction.
    every = AndesConfig(min_throughput_share=0.0)
    assert batch_sizes(100, cap(lambda b: 0.1 + 0.001 * b), every, ("latency",)) == [25, 50, 75,
                                                                                      100]
    # Without the latency trigger there is one size, the largest.
    assert batch_sizes(100, cap(lambda b: 0.002 * b), cfg, ("kv",)) == [100]


def test_the_park_budget_is_what_the_throughput_floor_lets_go_unless_set() -> None:
    from engine.policy.andes.config import AndesConfig
    from engine.policy.andes.memory import Memory

    assert AndesConfig().park_share == pytest.approx(0.02)  # 1 - the default floor, 0.98
    assert AndesConfig(min_throughput_share=0.9).park_share == pytest.approx(0.1)
    assert AndesConfig(min_throughput_share=0.9, park_budget=0.05).park_share == 0.05
    assert AndesConfig(park_budget=0.0).park_share == 0.0  # no parks for admissions at all
    with pytest.raises(ValueError, match="park_budget"):
        AndesConfig(park_budget=1.5)
    # The credit the refiner may spend accrues at that share of engine time, up to a burst.
    cfg = AndesConfig()
    memory = Memory(cfg)
    start = memory.park_credit(0.0, cfg)
    memory.spend(start)  # spent it all at t = 0
    assert memory.park_credit(10.0, cfg) == pytest.approx(0.02 * 10.0)
    assert memory.park_credit(10_000.0, cfg) == pytest.approx(memory.burst_s(cfg)) == start
