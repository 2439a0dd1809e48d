"""Latency profiles: the derivation from published figures, the formula, the JSON format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.sim.errors import ProfileError
from engine.sim.profile import (
    A100_80GB,
    LLAMA_31_70B,
    OPT_66B,
    Efficiency,
    LatencyProfile,
    derive_profile,
    get_profile,
)


def test_model_shapes_match_published_sizes() -> None:
    assert OPT_66B.params == pytest.approx(66e9, rel=0.02)
    assert LLAMA_31_70B.params == pytest.approx(70.6e9, rel=0.01)
    # OPT: 2 (K,V) x 64 layers x 9216 x 2 bytes; Llama: 2 x 80 x (8 x 128) x 2 bytes.
    assert OPT_66B.kv_bytes_per_token == 2 * 64 * 9216 * 2
    assert LLAMA_31_70B.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2


def test_derived_opt_profile_by_hand() -> None:
    eff = Efficiency()
    p = derive_profile(OPT_66B, A100_80GB, 4, eff)
    weight_bytes_gpu = OPT_66B.params * 2 / 4
    assert p.weight_read_s == pytest.approx(weight_bytes_gpu / (2.039e12 * 0.8))
    assert p.compute_s_per_token == pytest.approx(2 * OPT_66B.params / 4 / (312e12 * 0.5))
    kv_gpu = 0.9 * 80 * 2**30 - weight_bytes_gpu - 3 * 2**30
    assert p.kv_capacity_blocks == int(kv_gpu // (OPT_66B.kv_bytes_per_token / 4 * 16))
    # Small batches are bandwidth bound (flat in batch); big ones grow with batch.
    assert p.decode_s(2, 1000) == pytest.approx(p.decode_s(1, 500), rel=0.01)
    assert p.decode_s(256, 100_000) > 2 * p.decode_s(1, 500)
    assert p.prefill_s(2000) > p.prefill_s(100)


def test_iteration_formula() -> None:
    p = LatencyProfile(
        name="t",
        kv_capacity_blocks=10,
        overhead_s=1.0,
        weight_read_s=10.0,
        kv_read_s_per_token=0.01,
        compute_s_per_token=1.0,
        decode_s_per_seq=0.5,
        prefill_s_per_token=0.25,
    )
    # memory 10 + 0.01*100 = 11 > compute 2 -> 1 + 11 + 0.5*2
    assert p.iteration_s(2, 100, 0) == pytest.approx(13.0)
    # compute 2 + 20 = 22 > memory 11 -> 1 + 22 + 1 + 5
    assert p.iteration_s(2, 100, 20) == pytest.approx(29.0)


def test_json_round_trip_and_file(tmp_path: Path) -> None:
    p = get_profile("llama-3.1-70b-8xa100-40gb")
    assert LatencyProfile.from_json(p.to_json()) == p
    path = tmp_path / "fit.json"
    path.write_text(
        json.dumps(
            {
                "name": "fit",
                "kv_capacity_blocks": 100,
                "overhead_s": 0.02,
                "decode_s_per_seq": 1e-4,
                "kv_read_s_per_token": 1e-7,
                "prefill_s_per_token": 2e-4,
            }
        )
    )
    fit = get_profile(path)
    # a + b*batch + c*context + d*prefill
    assert fit.iteration_s(10, 1000, 50) == pytest.approx(0.02 + 1e-3 + 1e-4 + 1e-2)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"name": "x"}, "missing field 'kv_capacity_blocks'"),
        ({"name": "x", "kv_capacity_blocks": 5, "speed": 1}, "unknown field(s) 'speed'"),
        ({"name": "x", "kv_capacity_blocks": 0}, "kv_capacity_blocks must be an int >= 1, got 0"),
        ({"name": "x", "kv_capacity_blocks": 5, "overhead_s": -1}, "overhead_s must be"),
        ([1], "expected a JSON object"),
    ],
)
def test_bad_profiles_name_file_and_field(tmp_path: Path, data: object, needle: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError) as info:
        get_profile(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_unknown_profile_name() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'h100'"):
        get_profile("h100")
