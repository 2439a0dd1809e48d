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
