"""The ``andes`` command: subcommand dispatch and one-line errors (no engine is started)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from andes.cli import SUBCOMMANDS, main


def _andes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "andes", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = _andes("bogus")
    assert result.returncode == 2
    assert "unknown command 'bogus'" in result.stderr


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name: str) -> None:
    result = _andes(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"andes {name}" in result.stdout


def test_serve_rejects_an_unknown_policy_before_starting_anything() -> None:
    result = _andes("serve", "--policy", "nope", "--port", "0")
    assert result.returncode == 2
    assert "unknown policy 'nope'" in result.stderr
    assert "starting" not in result.stdout


def test_serve_rejects_bad_values_in_one_line() -> None:
    result = _andes("serve", "--kv-cache-gb", "-1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["andes serve: kv_cache_gb must be > 0, got -1.0"]


def _parse(name: str, *argv: str) -> tuple[object, str]:
    import argparse
    import contextlib
    import importlib
    import io

    parser = argparse.ArgumentParser(prog=f"andes {name}")
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        args = parser.parse_args(list(argv))
    return args, err.getvalue()


@pytest.mark.parametrize("name", ["serve", "gateway", "engine", "chat"])
def test_one_flag_name_per_setting(name: str) -> None:
    # The reader's pace and expected TTFT are --tds and --ttft everywhere (the API's own names).
    result = _andes(name, "--help")
    assert "--tds " in result.stdout and "--ttft " in result.stdout
    for old in ("--tds-tok-s", "--ttft-s", "--default-tds", "--default-ttft"):
        assert old not in result.stdout


@pytest.mark.parametrize(("name", "old", "new", "dest"), [
    ("gateway", "--tds-tok-s", "--tds", "tds_tok_s"),
    ("gateway", "--ttft-s", "--ttft", "ttft_s"),
    ("serve", "--tds-tok-s", "--tds", "tds_tok_s"),
    ("engine", "--default-tds", "--tds", "default_tds"),
    ("engine", "--default-ttft", "--ttft", "default_ttft"),
])
def test_old_flag_spellings_still_work_and_say_so(name: str, old: str, new: str,
                                                  dest: str) -> None:
    args, err = _parse(name, old, "7.5")
    assert getattr(args, dest) == 7.5
    assert f"{old} is deprecated; use {new}" in err
    args, err = _parse(name, new, "7.5")
    assert getattr(args, dest) == 7.5 and not err


def test_gateway_served_model_name_and_its_old_spelling() -> None:
    args, err = _parse("gateway", "--served-model-name", "a", "--model", "b")
    assert args.models == ["a", "b"]  # type: ignore[attr-defined]
    assert "--model is deprecated; use --served-model-name" in err


def test_bench_defaults_to_the_port_andes_serve_listens_on() -> None:
    serve_args, _ = _parse("serve")
    from gateway.config import GatewayConfig

    port = serve_args.port or GatewayConfig().port  # type: ignore[attr-defined]
    bench_args, _ = _parse("bench")
    assert bench_args.url == f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
