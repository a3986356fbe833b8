"""The budget solver and targets on synthetic confidences; the core rule reproduces its result."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.errors import BudgetError
from calibration.evaluate import evaluate_thresholds
from calibration.solver import BudgetSolver, check_target
from calibration.synthetic import synthetic_scores
from calibration.targets import parse_numbers, plan_targets
from calibration.thresholds import ThresholdRule
from exitwise.policy import decide_exits

COSTS = [6.86, 14.35, 27.54, 41.71, 58.48]


@pytest.fixture(scope="module")
def scores():  # type: ignore[no-untyped-def]
    return synthetic_scores(4000, 5, seed=3)


def test_meets_targets_within_one_percent(scores) -> None:  # type: ignore[no-untyped-def]
    solver = BudgetSolver(scores.confidence, COSTS)
    for target in np.linspace(COSTS[0], COSTS[-1], 25):
        sol = solver.solve(float(target))
        assert sol.achieved_mflops <= target + 1e-12
        assert sol.achieved_mflops >= 0.99 * target
        # One image moving between two exits is the finest step the curve has.
        assert target - sol.achieved_mflops <= (COSTS[-1] - COSTS[0]) / 4000 + 1e-9


def test_core_rule_reproduces_counts_and_cost(scores) -> None:  # type: ignore[no-untyped-def]
    solver = BudgetSolver(scores.confidence, COSTS)
    for target in (7.0, 15.0, 30.0, 50.0):
        sol = solver.solve(target)
        exits = decide_exits(scores.confidence, sol.thresholds)
        counts = np.bincount(exits, minlength=5)
        assert counts.tolist() == sol.walk.counts.tolist()
        assert float(counts @ np.array(COSTS)) / len(exits) == pytest.approx(sol.achieved_mflops)
        ev = evaluate_thresholds(scores, sol.thresholds, COSTS)
        assert ev.mflops == pytest.approx(sol.achieved_mflops)
        assert ev.counts.tolist() == sol.walk.counts.tolist()


def test_ends_of_the_range(scores) -> None:  # type: ignore[no-untyped-def]
    solver = BudgetSolver(scores.confidence, COSTS)
    low = solver.solve(COSTS[0])
    assert low.achieved_mflops == pytest.approx(COSTS[0])
    assert low.walk.counts.tolist() == [4000, 0, 0, 0, 0]
    high = solver.solve(COSTS[-1])
    assert high.achieved_mflops == pytest.approx(COSTS[-1])
    assert high.walk.counts.tolist() == [0, 0, 0, 0, 4000]
    assert high.thresholds[:-1].tolist() == [math.inf] * 4


def test_best_among_a_dense_grid_with_ties() -> None:
    # Confidences rounded to 2 decimals: ties make the cost curve jump, and the solver must
    # still never exceed the target and do at least as well as a dense grid of q.
    tied = synthetic_scores(3000, 5, seed=5, ties=True)
    solver = BudgetSolver(tied.confidence, COSTS)
    rule = ThresholdRule(tied.confidence)
    grid = [(q, rule.walk_q(q).cost(np.array(COSTS))) for q in np.logspace(-3, 3, 400)]
    for target in (10.0, 20.0, 35.0, 45.0):
        sol = solver.solve(target)
        assert sol.achieved_mflops <= target
        best_on_grid = max(c for _, c in grid if c <= target)
        assert sol.achieved_mflops >= best_on_grid - 1e-9


def test_result_does_not_depend_on_other_targets(scores) -> None:  # type: ignore[no-untyped-def]
    alone = BudgetSolver(scores.confidence, COSTS).solve(20.0)
    shared = BudgetSolver(scores.confidence, COSTS)
    for t in (8.0, 40.0, 20.5, 19.5):
        shared.solve(t)
    again = shared.solve(20.0)
    assert (again.q, again.achieved_mflops) == (alone.q, alone.achieved_mflops)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, 6.0, 58.5, 1e9])
def test_refuses_targets_outside_the_range(bad: float) -> None:
    with pytest.raises(BudgetError) as err:
        check_target(bad, COSTS)
    message = str(err.value)
    assert "\n" not in message
    if math.isfinite(bad) and bad > 0:
        assert "6.86..58.48 MFLOPs" in message


def test_parse_numbers() -> None:
    assert parse_numbers("8, 12,20.5", "budgets") == [8.0, 12.0, 20.5]
    assert parse_numbers(None, "budgets") == []
    for bad in ("", ",", "8,,12", "8,x", "nan"):
        with pytest.raises(BudgetError):
            parse_numbers(bad, "budgets")


def test_plan_targets_names_order_and_defaults() -> None:
    targets = plan_targets([20.0, 8.0, 8.0], [0.5], COSTS)
    assert [t.name for t in targets] == ["budget-8.00", "budget-20.00", "fraction-0.50"]
    assert targets[2].mflops == pytest.approx(0.5 * COSTS[-1])
    assert [t.name for t in plan_targets([8.001, 8.004], [], COSTS)] == [
        "budget-8.001",
        "budget-8.004",
    ]
    defaults = plan_targets([], [], COSTS)
    assert [t.name for t in defaults] == ["fraction-0.25", "fraction-0.50", "fraction-0.75"]
    # Exit 1 costs more than a quarter of the last: the smallest default is raised to it.
    raised = plan_targets([], [], [4.0, 6.0, 8.0])
    assert raised[0].mflops == 4.0 and raised[0].name == "fraction-0.50"
    assert [t.name for t in raised] == ["fraction-0.50", "fraction-0.75"]


def test_budgets_outside_the_range_are_named_with_the_exit_costs() -> None:
    costs = [7.549248, 16.736896, 32.822208, 46.7776]  # msdnet-fmnist at 64 pixels
    with pytest.raises(BudgetError) as err:
        plan_targets([4.0, 6.0, 9.0, 60.0], [], costs, "runs/my-images")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("budgets 4, 6 and 60 MFLOPs are outside the valid range ")
    assert "7.5493..46.7776 MFLOPs" in message
    assert "cumulative MFLOPs per exit: 7.5493, 16.7369, 32.8222, 46.7776" in message
    assert "--fractions 0.25,0.5,0.75" in message
    assert "`exitwise inspect runs/my-images`" in message
    # Every number shown is accepted: the ends are rounded inwards.
    assert [t.mflops for t in plan_targets([7.5493, 46.7776], [], costs)] == [7.5493, 46.7776]
    with pytest.raises(BudgetError, match=r"^budget 3 MFLOPs is outside .* inspect BUNDLE"):
        plan_targets([3.0], [], costs)


def test_the_fractions_suggested_are_valid() -> None:
    from calibration.targets import suggested_fractions

    assert suggested_fractions(COSTS) == [0.25, 0.5, 0.75]
    imagenet_stem = [19.9, 27.0, 39.5, 50.2]  # exit 1 is 40 % of the last
    assert suggested_fractions(imagenet_stem) == [0.5, 0.75]
    assert suggested_fractions([9.0, 10.0]) == [0.9, 1.0]
    for costs in (COSTS, imagenet_stem, [9.0, 10.0]):
        assert plan_targets([], suggested_fractions(costs), costs)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 0.05, 1.5, math.nan])
def test_plan_targets_refuses_bad_fractions(fraction: float) -> None:
    with pytest.raises(BudgetError):
        plan_targets([], [fraction], COSTS)
