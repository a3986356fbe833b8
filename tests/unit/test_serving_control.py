"""Budget control in closed loop on synthetic traffic: calibration's own table, the core exit
rule, and confidence streams whose distribution changes (a step, a ramp, beyond the bounds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.control import control_table
from calibration.solver import BudgetSolver
from calibration.synthetic import synthetic_scores
from exitwise.policy import decide_exits
from serving.control import BudgetController, ControlSettings, ControlTable

COSTS = [1.63, 3.80, 7.80, 12.10]
K = len(COSTS)


HELD = synthetic_scores(5000, K, seed=0).confidence


@pytest.fixture(scope="module")
def table() -> ControlTable:
    rows = control_table(BudgetSolver(HELD, COSTS), COSTS)
    return ControlTable([r.mflops for r in rows], [r.threshold_array() for r in rows])


def _traffic(n: int, seed: int) -> np.ndarray:
    """Images like the held-out split's (a fresh sample of the same distribution)."""
    return synthetic_scores(n, K, seed=seed).confidence


def _shift(conf: np.ndarray, strength: float) -> np.ndarray:
    """Harder images: every confidence pulled towards chance (noise, blur, low contrast do this)."""
    floor = 0.1
    return floor + (conf - floor) * (1.0 - strength)


def _run(
    ctl: BudgetController, table: ControlTable, stream: np.ndarray, calibrated: np.ndarray
) -> tuple[np.ndarray, list[float]]:
    """Serve ``stream`` in requests of 8 images; per image its cost, and b after each request."""
    costs = np.asarray(COSTS)
    out = np.empty(len(stream))
    budgets = []
    for i in range(0, len(stream), 8):
        thr = calibrated if not ctl.moved else table.at(ctl.budget)[0]
        exits = decide_exits(stream[i : i + 8], thr)
        out[i : i + 8] = costs[exits]
        ctl.observe(out[i : i + 8].tolist())
        budgets.append(ctl.budget)
    return out, budgets


@pytest.mark.parametrize("target", [3.0, 5.0, 8.0])
def test_a_stationary_stream_leaves_the_calibrated_thresholds_alone(
    table: ControlTable, target: float
) -> None:
    # Traffic that looks like the held-out split: images drawn from it (with replacement).
    calibrated, expected = table.at(target)
    ctl = BudgetController(expected, (COSTS[0], COSTS[-1]))
    stream = HELD[np.random.default_rng(1).integers(0, len(HELD), 60_000)]
    served, _ = _run(ctl, table, stream, calibrated)
    assert ctl.moves == 0 and not ctl.moved
    assert abs(served.mean() / expected - 1) < 0.02


@pytest.mark.parametrize("target", [3.0, 5.0, 8.0])
@pytest.mark.parametrize("strength", [0.25, 0.5])
def test_a_step_shift_is_brought_back_within_three_percent(
    table: ControlTable, target: float, strength: float
) -> None:
    calibrated, expected = table.at(target)
    ctl = BudgetController(expected, (COSTS[0], COSTS[-1]))
    clean = _traffic(4000, seed=2)
    shifted = _shift(_traffic(20_000, seed=3), strength)
    costs, budgets = _run(ctl, table, np.concatenate([clean, shifted]), calibrated)
    open_loop = decide_exits(shifted, calibrated)
    assert np.asarray(COSTS)[open_loop].mean() > 1.1 * expected  # the shift hurts without control
    after = costs[4000 + 2000 :]
    assert abs(after.mean() / expected - 1) < 0.03
    # Windows of 4000 images after the first 2000 shifted ones stay close to the target.
    for start in range(0, len(after) - 4000 + 1, 2000):
        assert abs(after[start : start + 4000].mean() / expected - 1) < 0.05
    # No oscillation: once settled (4000 shifted images in), the thresholds stay in a narrow
    # band: the moves left are small corrections (a few percent, as the noise allows), not
    # swings that grow.
    settled = np.asarray(budgets[(4000 + 4000) // 8 :])
    assert budgets[-1] < expected and ctl.moves >= 1
    assert np.max(np.abs(np.log(settled / np.median(settled)))) < 0.10


def test_a_ramp_is_tracked(table: ControlTable) -> None:
    calibrated, expected = table.at(5.0)
    ctl = BudgetController(expected, (COSTS[0], COSTS[-1]))
    n = 40_000
    base = _traffic(n, seed=4)
    strength = np.linspace(0.0, 0.5, n)[:, None]
    ramp = 0.1 + (base - 0.1) * (1.0 - strength)
    costs, _ = _run(ctl, table, ramp, calibrated)
    open_loop = np.asarray(COSTS)[decide_exits(ramp[-8000:], calibrated)].mean()
    assert open_loop > 1.3 * expected
    # Still drifting at the end: the loop lags a little behind, by a few percent.
    assert abs(costs[-8000:].mean() / expected - 1) < 0.05
    assert ctl.moves >= 2


def test_it_stays_within_its_bounds(table: ControlTable) -> None:
    calibrated, expected = table.at(3.0)
    lo = 2.5
    ctl = BudgetController(expected, (lo, COSTS[-1]))
    # So hard that even the cheapest allowed thresholds cost more than the target.
    _run(ctl, table, _shift(_traffic(30_000, seed=5), 0.9), calibrated)
    assert ctl.budget == lo
    # And back on easy traffic it never goes dearer than the last exit.
    ctl2 = BudgetController(expected, (COSTS[0], 3.2))
    easy = np.minimum(1.0, _traffic(30_000, seed=6) * 1.5)
    _run(ctl2, table, easy, calibrated)
    assert COSTS[0] <= ctl2.budget <= 3.2


def test_back_to_clean_traffic_it_returns_towards_the_calibrated_budget(
    table: ControlTable,
) -> None:
    calibrated, expected = table.at(5.0)
    ctl = BudgetController(expected, (COSTS[0], COSTS[-1]))
    _run(ctl, table, _shift(_traffic(12_000, seed=7), 0.4), calibrated)
    low = ctl.budget
    assert low < 0.9 * expected
    costs, _ = _run(ctl, table, _traffic(16_000, seed=8), calibrated)
    assert abs(ctl.budget / expected - 1) < 0.06 and ctl.budget > low
    assert abs(costs[-6000:].mean() / expected - 1) < 0.04


def test_the_table_picks_the_dearest_row_within_the_budget(table: ControlTable) -> None:
    thr, cost = table.at(5.0)
    assert cost <= 5.0 and thr[-1] == -math.inf
    assert table.at(0.1)[1] == table.mflops[0]  # below the table: the cheapest row
    assert table.at(1e9)[1] == table.mflops[-1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "at least one image"),
        ({"tolerance": -0.1}, "0 or more"),
        ({"tolerance": math.nan}, "0 or more"),
        ({"gain": 0.0}, "gain"),
        ({"max_step": 1.0}, "max_step"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ControlSettings(**kwargs)  # type: ignore[arg-type]


def test_recording_only_reports_the_realised_cost_and_never_moves() -> None:
    """With control off the server still reports what a point realises (record, not observe)."""
    ctl = BudgetController(3.0, (COSTS[0], COSTS[-1]), sliding=100)
    assert ctl.realised() is None
    for _ in range(50):
        ctl.record([COSTS[-1]] * 8)  # 4x the target: observe would have moved long ago
    assert ctl.realised() == pytest.approx(COSTS[-1])
    assert ctl.budget == 3.0 and not ctl.moved and ctl.moves == 0
