"""BenchRun.load_finished: what a resumable benchmark reuses and what it runs again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.result import BenchRun


@dataclass(frozen=True)
class _Settings:
    rate: float
    points: tuple[str, ...]


def _write(path: Path, meta: dict, interrupted: bool = False) -> None:
    run = BenchRun(records=[], meta=meta, interrupted=interrupted)
    run.save(path)


def test_reuses_only_a_finished_run_made_with_the_same_settings(tmp_path: Path) -> None:
    settings = _Settings(1.5, ("a", "b"))
    path = tmp_path / "run.json"
    assert BenchRun.load_finished(path, "settings", settings) is None  # not there
    _write(path, {"settings": json.loads(json.dumps({"rate": 1.5, "points": ["a", "b"]}))})
    assert BenchRun.load_finished(path, "settings", settings) is not None
    assert BenchRun.load_finished(path, "settings", _Settings(2.0, ("a", "b"))) is None
    assert BenchRun.load_finished(path) is not None  # no settings asked for
    _write(path, {"settings": {"rate": 1.5, "points": ["a", "b"]}}, interrupted=True)
    assert BenchRun.load_finished(path, "settings", settings) is None
    path.write_text("{not json")
    assert BenchRun.load_finished(path) is None
