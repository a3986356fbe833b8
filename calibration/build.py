"""From the scores of the held-out and test splits to a :class:`Calibration` (pure, no IO)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exitwise.bundle import (
    AnytimeExit,
    Calibration,
    OperatingPoint,
    SplitResult,
    SweepPoint,
    utc_now,
)

from .control_table import control_table
from .errors import CalibrationError
from .evaluate import (
    SWEEP_QS,
    DynamicPoint,
    SplitEvaluation,
    anytime,
    dynamic_point,
    sweep,
)
from .scores import SplitScores
from .solver import BudgetSolver, Solution
from .targets import Target

# The default operating point: the cheapest one whose held-out accuracy is within this many
# percentage points of the most accurate one (nearly all the accuracy for the least compute).
DEFAULT_TOLERANCE = 0.5


@dataclass(frozen=True)
class SolvedPoint:
    target: Target
    solution: Solution
    result: DynamicPoint


def split_result(ev: SplitEvaluation) -> SplitResult:
    return SplitResult(
        accuracy=ev.accuracy, mflops=ev.mflops, exit_fractions=ev.fractions, images=ev.images
    )


def thresholds_json(thresholds: np.ndarray) -> list[float | None]:
    """+inf ("nobody exits") and the last exit's entry become null."""
    out: list[float | None] = [None if math.isinf(t) else float(t) for t in thresholds]
    out[-1] = None
    return out


def solve_points(
    heldout: SplitScores,
    test: SplitScores | None,
    exit_mflops: Sequence[float],
    targets: Sequence[Target],
    solver: BudgetSolver | None = None,
) -> list[SolvedPoint]:
    solver = solver or BudgetSolver(heldout.confidence, exit_mflops)
    points = []
    for target in targets:
        solution = solver.solve(target.mflops)
        result = dynamic_point(solution.q, solution.thresholds, heldout, test, exit_mflops)
        # The solver's own walk and the core exit rule must agree image for image.
        if not np.array_equal(result.heldout.counts, solution.walk.counts):
            raise AssertionError("the core exit rule does not reproduce the solver's partition")
        points.append(SolvedPoint(target, solution, result))
    return points


def choose_default(points: Sequence[OperatingPoint], tolerance: float = DEFAULT_TOLERANCE) -> str:
    best = max(p.heldout.accuracy for p in points)
    good = [p for p in points if p.heldout.accuracy >= best - tolerance]
    return min(good, key=lambda p: (p.expected_mflops, p.name)).name


def build_calibration(
    *,
    weights_sha256: str,
    heldout_sha256: str,
    exit_mflops: Sequence[float],
    heldout: SplitScores,
    test: SplitScores | None,
    targets: Sequence[Target],
    default: str | None = None,
) -> tuple[Calibration, list[SolvedPoint]]:
    """Solve every target, run the anytime and the 39-point dynamic evaluations."""
    costs = [float(c) for c in exit_mflops]
    if heldout.num_exits != len(costs) or (test is not None and test.num_exits != len(costs)):
        raise CalibrationError("scores and exit costs disagree on the number of exits")
    solver = BudgetSolver(heldout.confidence, costs)
    solved = solve_points(heldout, test, costs, targets, solver)
    operating_points = [
        OperatingPoint(
            name=p.target.name,
            target_mflops=p.target.mflops,
            q=p.solution.q,
            thresholds=thresholds_json(p.solution.thresholds),
            heldout=split_result(p.result.heldout),
            test=None if p.result.test is None else split_result(p.result.test),
        )
        for p in solved
    ]
    names = [p.name for p in operating_points]
    if default is not None and default not in names:
        raise CalibrationError(
            f"--default {default!r} is not one of the operating points: {', '.join(names)}"
        )
    any_held = anytime(heldout)
    any_test = anytime(test) if test is not None else None
    anytime_exits = [
        AnytimeExit(
            exit=k + 1,
            mflops=costs[k],
            heldout_top1=any_held.top1[k],
            heldout_top5=any_held.top5[k],
            test_top1=None if any_test is None else any_test.top1[k],
            test_top5=None if any_test is None else any_test.top5[k],
        )
        for k in range(len(costs))
    ]
    sweep_points = [
        SweepPoint(
            q=d.q,
            heldout_accuracy=d.heldout.accuracy,
            heldout_mflops=d.heldout.mflops,
            test_accuracy=None if d.test is None else d.test.accuracy,
            test_mflops=None if d.test is None else d.test.mflops,
            exit_fractions=d.heldout.fractions,
        )
        for d in sweep(heldout, test, costs, SWEEP_QS, solver.rule)
    ]
    calibration = Calibration(
        weights_sha256=weights_sha256,
        heldout_sha256=heldout_sha256,
        created=utc_now(),
        exit_mflops=costs,
        operating_points=operating_points,
        default_operating_point=default or choose_default(operating_points),
        anytime=anytime_exits,
        sweep=sweep_points,
        control=control_table(solver, costs),
    )
    return calibration, solved
