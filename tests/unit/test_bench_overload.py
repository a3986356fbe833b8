"""The overload benchmark's accuracy estimate from the calibration's test figures."""

from __future__ import annotations

import pytest

from benchmarks.overload import _accuracy

INFO = {
    "exits": [{"test_accuracy": a} for a in (70.0, 80.0, 90.0)],
    "operating_points": [
        {"name": "cheap", "test": {"accuracy": 75.0, "exit_fractions": [0.5, 0.5, 0.0]}},
        {"name": "dear", "test": {"accuracy": 85.0, "exit_fractions": [0.0, 0.5, 0.5]}},
    ],
}


def _did(hist: dict[str, int], degraded: dict[str, int]) -> dict:  # type: ignore[type-arg]
    return {"images": sum(hist.values()), "exit_histogram": hist, "degraded": degraded}


def test_full_network_answers_count_the_exit_they_came_from() -> None:
    # A deadline stopped half of them at exit 1: not the last exit's accuracy.
    assert _accuracy(INFO, _did({"1": 50, "3": 50}, {})) == pytest.approx(80.0)
    assert _accuracy(INFO, _did({"3": 10}, {})) == pytest.approx(90.0)


def test_stepped_down_answers_count_their_point_and_leave_the_rest_exits() -> None:
    # 40 stepped down to "cheap" (expected at exits 1 and 2, 20 each); the 60 others ran to
    # exit 3: 40 x 75 + 60 x 90.
    did = _did({"1": 20, "2": 20, "3": 60}, {"cheap": 40})
    assert _accuracy(INFO, did) == pytest.approx((40 * 75 + 60 * 90) / 100)


def test_no_answers_or_no_test_figures_give_no_estimate() -> None:
    assert _accuracy(INFO, _did({}, {})) is None
    bare = {**INFO, "exits": [{"test_accuracy": None}] * 3}
    assert _accuracy(bare, _did({"3": 5}, {})) is None
