"""The pure helpers of benchmarks/peers.py: percentiles, turns, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import peers


def test_p50_p99_ms_nearest_rank() -> None:
    samples = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p50, p99 = peers.p50_p99_ms(samples)
    assert p50 == pytest.approx(50.5)
    assert p99 == pytest.approx(100.0)
    assert peers.p50_p99_ms([0.003, 0.001, 0.002]) == pytest.approx((2.0, 3.0))


def test_p50_p99_ms_refuses_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        peers.p50_p99_ms([])


def test_rotated_gives_everyone_the_first_turn() -> None:
    names = ["ours", "SWE-ReX", "OpenHands"]
    firsts = [peers.rotated(names, turn)[0] for turn in range(6)]
    assert firsts == ["ours", "SWE-ReX", "OpenHands"] * 2
    assert peers.rotated(names, 4) == ["SWE-ReX", "OpenHands", "ours"]
    assert peers.rotated([], 3) == []


def test_write_content_is_one_kb_and_differs_per_sample() -> None:
    contents = {peers.write_content(i) for i in range(100)}
    assert len(contents) == 100
    assert {len(c.encode()) for c in contents} == {1024}


def test_format_table_ratio_is_peer_over_baseline() -> None:
    samples = {
        "echo hi": {"ours": [0.001, 0.001, 0.002], "peer": [0.004, 0.004, 0.005]},
        "read": {"ours": [0.002], "peer": [0.001]},
    }
    header, echo, read = peers.format_table(samples, ["ours", "peer"], "ours")
    assert "ours p50 / p99 ms" in header
    assert "peer / ours" in header
    assert echo.split()[:2] == ["echo", "hi"]
    assert "1.000 /     2.000" in echo
    assert "4.000 /     5.000" in echo
    assert echo.endswith("4.0x")
    assert read.endswith("0.5x")
