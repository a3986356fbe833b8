"""The table the server's budget control moves along: thresholds for budgets about 1 % apart.

The server cannot solve budgets itself (it has neither the held-out confidences nor, by the
packages' dependency rule, the solver), so calibration solves them here once: budgets spaced
geometrically by ``step`` from the first exit's cost to the last's, each solved on the held-out
split like any operating point. Rows whose thresholds repeat are kept once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from exitwise.bundle import ControlPoint

from .errors import BudgetError
from .solver import BudgetSolver

STEP = 0.01  # relative spacing of the budgets


def control_table(
    solver: BudgetSolver, exit_mflops: Sequence[float], step: float = STEP
) -> list[ControlPoint]:
    """Rows cheapest first; each row's cost is its expected cost on the held-out split."""
    lo, hi = float(exit_mflops[0]), float(exit_mflops[-1])
    count = max(2, math.ceil(math.log(hi / lo) / math.log1p(step)) + 1)
    rows: dict[tuple[float, ...], float] = {}
    for budget in np.geomspace(lo, hi, count):
        try:
            solution = solver.solve(float(min(max(budget, lo), hi)))
        except BudgetError:  # the first exit's cost itself, a rounding below the cheapest q
            continue
        key = tuple(float(t) for t in solution.thresholds)
        rows.setdefault(key, solution.achieved_mflops)
    table = sorted(rows.items(), key=lambda kv: kv[1])
    return [
        ControlPoint(
            mflops=cost,
            thresholds=[None if math.isinf(t) else t for t in key[:-1]] + [None],
        )
        for key, cost in table
    ]
