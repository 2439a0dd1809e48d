"""Workload loading: the paper's trace format, ShareGPT JSON, the synthetic generator, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.sim.errors import WorkloadError
from engine.sim.workload import (
    estimate_tokens,
    load_andes_trace,
    load_sharegpt,
    load_workload,
    synthetic_workload,
)


def write(tmp_path: Path, data: object, name: str = "w.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


ANDES_RECORDS = [
    {"id": "a_0", "prompt": "x" * 40, "output_len": 6, "ttft": 1, "latency": 0.25},
    {"id": "b_0", "prompt": "hello", "output_len": 300, "ttft": 2.5, "latency": 0.2},
]


def test_andes_trace_fields(tmp_path: Path) -> None:
    reqs = load_workload(write(tmp_path, ANDES_RECORDS))
    assert [r.req_id for r in reqs] == ["a_0", "b_0"]
    assert reqs[0].prompt_tokens == 10  # 40 chars at 4 chars/token
    assert reqs[1].prompt_tokens == 2  # 5 chars rounds up
    assert reqs[0].output_tokens == 6
    assert reqs[0].spec.ttft_s == 1.0 and reqs[0].spec.tds_tok_s == pytest.approx(4.0)
    assert reqs[1].spec.ttft_s == 2.5 and reqs[1].spec.tds_tok_s == pytest.approx(5.0)


def test_limit_keeps_the_first(tmp_path: Path) -> None:
    assert [r.req_id for r in load_andes_trace(write(tmp_path, ANDES_RECORDS), limit=1)] == ["a_0"]


def test_sharegpt_first_exchange(tmp_path: Path) -> None:
    data = [
        {
            "id": "c1",
            "conversations": [
                {"from": "human", "value": "q" * 8},
                {"from": "gpt", "value": "a" * 400},
                {"from": "human", "value": "again"},
                {"from": "gpt", "value": "no"},
            ],
        },
        {"id": "lonely", "conversations": [{"from": "human", "value": "hi"}]},
        {
            "id": "c2",
            "conversations": [
                {"from": "gpt", "value": "x"},
                {"from": "human", "value": "abcd"},
                {"from": "gpt", "value": "abcdefgh"},
            ],
        },
    ]
    reqs = load_workload(write(tmp_path, data))
    assert [(r.req_id, r.prompt_tokens, r.output_tokens) for r in reqs] == [
        ("c1", 2, 100),
        ("c2", 1, 2),
    ]
    assert len(load_sharegpt(write(tmp_path, data), limit=1)) == 1


@pytest.mark.parametrize(
    ("records", "needle"),
    [
        (
            [{"id": "r9", "prompt": "p", "ttft": 1, "latency": 0.2}],
            "record 0 (id 'r9'), field 'output_len': missing",
        ),
        (
            [ANDES_RECORDS[0], {"id": "r1", "prompt": "p", "output_len": "7"}],
            "record 1 (id 'r1'), field 'output_len'",
        ),
        ([{"id": "r2", "prompt": "p", "output_len": 0}], "field 'output_len': must be >= 1"),
        ([{"id": "r3", "prompt": 5, "output_len": 3}], "field 'prompt'"),
        ([{"id": "r4", "prompt": "p", "output_len": 3, "latency": 0}], "field 'latency'"),
        ([{"id": "r5", "prompt": "p", "output_len": 3, "ttft": -1}], "field 'ttft'"),
        ([{"id": "r6", "prompt": "p", "output_len": True}], "field 'output_len'"),
        ([["not", "an", "object"]], "record 0: expected an object"),
    ],
)
def test_malformed_trace_names_file_record_and_field(
    tmp_path: Path, records: list[object], needle: str
) -> None:
    path = write(tmp_path, records)
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_malformed_sharegpt_names_the_turn(tmp_path: Path) -> None:
    data = [{"id": "s1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]}]
    with pytest.raises(
        WorkloadError, match=r"record 0 \(id 's1'\), field 'conversations\[1\]\.value'"
    ):
        load_workload(write(tmp_path, data))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match="cannot read"):
        load_workload(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(WorkloadError, match=r"bad\.json: not valid JSON"):
        load_workload(bad)
    with pytest.raises(WorkloadError, match="expected a JSON list"):
        load_workload(write(tmp_path, {"id": 1}))


def test_synthetic_is_seeded_and_shaped() -> None:
    a = synthetic_workload(2000, seed=7)
    assert a == synthetic_workload(2000, seed=7)
    assert a != synthetic_workload(2000, seed=8)
    outputs = [r.output_tokens for r in a]
    assert 250 < sum(outputs) / len(outputs) < 400  # mean 330 before clipping at 1,400
    assert max(outputs) <= 1400 and min(r.prompt_tokens for r in a) >= 1
    assert all(3.8 <= r.spec.tds_tok_s <= 5.1 for r in a)
    assert len({r.req_id for r in a}) == 2000


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_the_paper_trace_ships_inside_the_package() -> None:
    # A fresh install has no ../shared/data: the trace must be package data, gzipped.
    import engine.sim
    from bench.cli import DEFAULT_TRACE as BENCH_DEFAULT
    from bench.plan import load_prompt_texts
    from engine.sim.cli import DEFAULT_TRACE as SIM_DEFAULT
    from engine.sim.workload import PAPER_TRACE

    assert PAPER_TRACE.is_relative_to(Path(engine.sim.__file__).resolve().parent)
    assert PAPER_TRACE.suffix == ".gz" and PAPER_TRACE.stat().st_size < 1_200_000
    assert Path(BENCH_DEFAULT) == Path(SIM_DEFAULT) == PAPER_TRACE
    readme = (PAPER_TRACE.parent / "README.md").read_text()
    assert "Apache-2.0" in readme and "sharegpt_qoe_trace.json" in readme
    requests = load_workload(PAPER_TRACE)
    assert len(requests) == 3000
    texts = load_prompt_texts(PAPER_TRACE)
    assert set(texts) == {r.req_id for r in requests}


def test_gzipped_workload_files_read_like_plain_ones(tmp_path: Path) -> None:
    import gzip

    records = [{"id": "a", "prompt": "hello there", "output_len": 7, "ttft": 1, "latency": 0.25}]
    plain, packed = tmp_path / "w.json", tmp_path / "w.json.gz"
    plain.write_text(json.dumps(records))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_workload(packed) == load_workload(plain)
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(WorkloadError, match=r"bad\.json\.gz: cannot read workload"):
        load_workload(tmp_path / "bad.json.gz")
