"""``andes bench`` from the command line: one-line errors and an end-to-end run."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import pytest

from andes.cli import main
from bench.scripted_engine import Script, ScriptedEngine


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--workload", "/no/such/trace.json"], "workload file not found: '/no/such/trace.json'"),
        (["--url", "ftp://x", "--workload", "synthetic"], "'ftp://x'"),
        (["--workload", "synthetic", "--url", "http://127.0.0.1:{port}"], "cannot list models"),
        (["--workload", "synthetic", "--transport", "ws", "--api", "completions"],
         "chat completions only"),
    ],
)
def test_bad_inputs_give_one_line_errors(capsys, argv, needle) -> None:
    argv = [a.format(port=closed_port()) for a in argv]
    assert main(["bench", "--no-progress", "--num-requests", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("andes bench: error:") and needle in err and "\n" not in err


def test_malformed_workload_names_the_record(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "prompt": "p", "output_len": "many"}]))
    assert main(["bench", "--workload", str(bad), "--num-requests", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.json" in err and "output_len" in err and "\n" not in err


@pytest.mark.parametrize("argv", [["--rate", "0"], ["--rate", "fast"], ["--tds-scale", "-2"],
                                  ["--api", "grpc"], ["--num-requests", "0"],
                                  ["--transport", "sse"], ["--misdeclared-share", "1.5"],
                                  ["--pause-share", "x"], ["--pause-duration", "5"],
                                  ["--read-pace-factor", "0.8,0.5"]])  # fmt: skip
def test_bad_option_values_exit_2(capsys, argv) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert "andes bench: error: argument" in capsys.readouterr().err


def test_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for option in ("--url", "--api", "--tds-scale", "--rate", "--arrivals", "--max-concurrency",
                   "--json", "--plot", "--max-output-tokens", "--no-vllm-extras", "--transport",
                   "--misdeclared-share", "--pause-share", "--read-pace-factor",
                   "--pause-duration"):  # fmt: skip
        assert option in out


async def test_end_to_end_run_writes_json_and_prints_the_table(tmp_path) -> None:
    out = tmp_path / "runs.json"
    async with ScriptedEngine(Script(tokens=None, gap_s=0.005)) as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "andes", "bench", "--url", server.url, "--workload",
            "synthetic", "--num-requests", "4", "--rate", "20,40", "--max-output-tokens", "6",
            "--tds-scale", "0.5", "--json", str(out), "--no-progress",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    table = stdout.decode()
    assert "avg QoE" in table and "measured" in table
    runs = json.loads(out.read_text())["runs"]
    assert [r["meta"]["rate_rps"] for r in runs] == [20.0, 40.0]
    assert all(len(r["records"]) == 4 for r in runs)
    rec = runs[0]["records"][0]
    assert len(rec["token_times_s"]) == 6 and rec["error"] is None
    assert len(server.records) == 8
    assert all(r.body["max_tokens"] <= 6 for r in server.records)
