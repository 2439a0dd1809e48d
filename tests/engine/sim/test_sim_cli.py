"""``andes sim`` end to end on a small generated trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from andes.cli import main


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    records = [
        {
            "id": f"t{i}",
            "prompt": "word " * (10 + i),
            "output_len": 20 + (i % 7) * 5,
            "ttft": 1,
            "latency": 0.2,
        }
        for i in range(40)
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(records))
    return path


def test_sweep_json_and_plot(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "q.png"
    rc = main(
        [
            "sim",
            "--workload",
            str(trace),
            "--policy",
            "fcfs",
            "--rate",
            "1,3",
            "--num-requests",
            "30",
            "--json",
            "-",
            "--plot",
            str(plot),
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["policy"], r["rate_rps"], r["num_requests"]) for r in rows] == [
        ("fcfs", 1.0, 30),
        ("fcfs", 3.0, 30),
    ]
    assert all(0 <= r["avg_qoe"] <= 1 for r in rows)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_table_and_synthetic(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "sim",
            "--workload",
            "synthetic",
            "--num-requests",
            "20",
            "--rate",
            "0.5",
            "--no-progress",
            "--arrivals",
            "gamma",
            "--cv",
            "2",
            "--seed",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "20 requests, gamma cv=2 arrivals, seed 3" in out and "avg QoE" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--workload", "/nonexistent/t.json"], "/nonexistent/t.json: cannot read workload"),
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--profile", "h100"], "unknown profile 'h100'"),
    ],
)
def test_errors_are_one_line(
    trace: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["sim", "--workload", str(trace), "--rate", "1", "--no-progress"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("andes sim: error: ") and needle in err and err.count("\n") == 1


def test_bad_argument_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sim", "--rate", "0,1"])
    assert info.value.code == 2
    assert "rates must be finite numbers > 0" in capsys.readouterr().err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sim", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--workload",
        "--num-requests",
        "--arrivals",
        "--rate",
        "--cv",
        "--seed",
        "--policy",
        "--profile",
        "--preemption",
        "--chunked-prefill-tokens",
        "--dump-profile",
        "--json",
        "--plot",
        "--no-progress",
    ):
        assert option in text


def test_dump_profile_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--dump-profile"]) == 0
    path = tmp_path / "p.json"
    path.write_text(capsys.readouterr().out)
    assert main(["sim", "--profile", str(path), "--dump-profile"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "opt-66b-4xa100-80gb"


def test_defaults_run_the_shipped_paper_trace(capsys: pytest.CaptureFixture[str]) -> None:
    # A fresh install has no ../shared/data: the default workload is the copy in the package.
    assert main(["sim", "--num-requests", "40", "--rate", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "40 requests, poisson arrivals" in out and "avg QoE" in out


def test_old_workload_spellings_still_work(
    trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One spelling in both CLIs (--workload PATH|synthetic); the old ones are deprecated aliases.
    base = ["sim", "--rate", "1", "--no-progress", "--json", "-", "--num-requests", "10"]
    assert main([*base, "--trace", str(trace)]) == 0
    captured = capsys.readouterr()
    assert "--trace is deprecated; use --workload" in captured.err
    assert json.loads(captured.out)[0]["num_requests"] == 10
    assert main([*base, "--synthetic"]) == 0
    captured = capsys.readouterr()
    assert "--synthetic is deprecated; use --workload synthetic" in captured.err
    assert "--trace" not in main_help(capsys) and "--synthetic" not in main_help(capsys)


def main_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    return capsys.readouterr().out
