"""``exitwise bench calibration`` runs and reports what it measured (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from cli import main


def test_bench_calibration_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "calibration", "--images", "3000", "--budgets", "8", "--repeat", "1"]
    assert main([*args, "--test-images", "500", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 3000 and result["exits"] == 5 and result["budgets"] == 8
    assert result["exceeded"] == 0
    assert 0 <= result["max_relative_gap"] < 0.01
    assert result["solve_s"] > 0 and result["full_s"] > 0 and result["machine"]


def test_bench_calibration_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "calibration", "--images", "2000", "--exits", "3", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "solve 40 budgets" in out and "budgets exceeded" in out


def test_bench_calibration_refuses_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "calibration", "--images", "1"]) == 1
    assert "error:" in capsys.readouterr().err
