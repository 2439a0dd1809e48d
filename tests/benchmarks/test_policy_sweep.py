"""benchmarks/policy_sweep.py grid: engine_grid's 2x points in the simulator, andes per option."""

from __future__ import annotations

import re

import pytest

from benchmarks import policy_sweep


def test_the_grid_mode_prints_every_2x_point_with_each_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = policy_sweep.main(["grid", "--setting", "memory-bound", "--duration", "4",
                              "--opts", "{}", '{"park_budget": 0.5}'])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "memory-bound 2x-trace-poisson", "memory-bound 2x-trace-gamma3",
        "memory-bound 2x-halved-poisson", "memory-bound 2x-halved-gamma3",
    ]  # fmt: skip
    for line in lines:
        assert line.count("| andes ") == 2 and '{"park_budget": 0.5}' in line
        ratios = re.findall(r"\((\d+\.\d\d)x\)", line)
        assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)


def test_a_bad_option_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert policy_sweep.main(["grid", "--duration", "2", "--opts", '{"horizon_s": -1}']) == 2
    assert "horizon_s must be" in capsys.readouterr().err
