"""The budget solver: from a target average cost (MFLOPs per image) to q and thresholds.

The expected cost on the held-out split is a step function of q: it depends on q only through
the quota vector floor(n p_k(q)). It rises with q overall (a larger q moves the exit distribution
to later exits) but floors and ties can make single steps go backwards. The solver therefore

1. evaluates a fixed log-spaced grid of q from 1e-15 (everyone leaves at exit 1) to 1e15 (everyone
   reaches the last exit), 20 points per decade between 1e-4 and 1e4,
2. bisects, in log q down to a relative width of 1e-12, every grid interval whose ends straddle
   the target (one where the curve is monotone, several where ties make it wiggle), and
3. returns, among every q it evaluated for this target (grid and bisection), the one with the
   largest expected cost that does not exceed the target.

The result never exceeds the target, and on a split of n images it is within one image's move
between two exits of the target, unless ties make the curve jump (then no q does better among
those tried). Results for a target do not depend on which other targets were solved before.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import BudgetError
from .thresholds import ThresholdRule, Walk

Q_MIN = 1e-15
Q_MAX = 1e15
# Dense where exit distributions are mixed (20 points per decade over 1e-4..1e4), sparse towards
# the ends, where nearly every image leaves at the first or reaches the last exit.
_GRID = np.unique(
    np.concatenate([np.logspace(-15, -4, 12), np.logspace(-4, 4, 161), np.logspace(4, 15, 12)])
)
_BISECT_RTOL = 1e-12
# A target may exceed the exact cost range by this relative amount (rounding in "fraction 1.0").
_RANGE_RTOL = 1e-7


@dataclass(frozen=True)
class Solution:
    target_mflops: float
    q: float
    walk: Walk
    achieved_mflops: float  # expected cost on the held-out split

    @property
    def thresholds(self) -> np.ndarray:
        return self.walk.thresholds


def cost_range(exit_mflops: Sequence[float] | np.ndarray) -> tuple[float, float]:
    return float(exit_mflops[0]), float(exit_mflops[-1])


def describe_range(exit_mflops: Sequence[float] | np.ndarray) -> str:
    """The valid range, rounded inwards so that every number shown is accepted."""
    low, high = cost_range(exit_mflops)
    return f"{math.ceil(low * 1e4) / 1e4:g}..{math.floor(high * 1e4) / 1e4:g} MFLOPs"


def in_range(target: float, exit_mflops: Sequence[float] | np.ndarray) -> bool:
    """Whether a finite positive ``target`` lies in [exit 1's cost, the last exit's cost]."""
    low, high = cost_range(exit_mflops)
    return low * (1 - _RANGE_RTOL) <= target <= high * (1 + _RANGE_RTOL)


def describe_costs(exit_mflops: Sequence[float] | np.ndarray) -> str:
    """Every exit's cumulative cost, the first rounded up and the last down (as in
    :func:`describe_range`: every number shown is a valid budget)."""
    costs = [f"{round(float(c), 4):g}" for c in exit_mflops]
    costs[0] = f"{math.ceil(float(exit_mflops[0]) * 1e4) / 1e4:g}"
    costs[-1] = f"{math.floor(float(exit_mflops[-1]) * 1e4) / 1e4:g}"
    return ", ".join(costs)


def check_target(
    target: float, exit_mflops: Sequence[float] | np.ndarray, what: str = "budget"
) -> float:
    """``target`` as a float inside [exit 1's cost, the last exit's cost], or a BudgetError."""
    low, high = cost_range(exit_mflops)
    if not isinstance(target, (int, float)) or math.isnan(target):
        raise BudgetError(f"{what} {target!r} is not a number")
    if target <= 0 or math.isinf(target):
        raise BudgetError(f"{what} {target:g} MFLOPs must be a positive finite number")
    if not in_range(target, exit_mflops):
        raise BudgetError(
            f"{what} {target:g} MFLOPs is outside the valid range {describe_range(exit_mflops)} "
            f"(exit 1 costs {low:.8g}, exit {len(exit_mflops)} costs {high:.8g})"
        )
    return min(max(float(target), low), high)


class BudgetSolver:
    """Solves targets on one held-out confidence matrix; memoises the rule per quota vector."""

    def __init__(self, confidences: np.ndarray, exit_mflops: Sequence[float]) -> None:
        self.rule = ThresholdRule(confidences)
        self.exit_mflops = np.asarray(exit_mflops, dtype=np.float64)
        if self.exit_mflops.shape != (self.rule.num_exits,):
            raise ValueError("one cumulative cost per exit")
        self._memo: dict[bytes, tuple[Walk, float]] = {}
        self._grid: list[tuple[float, Walk, float]] | None = None

    def evaluate(self, q: float) -> tuple[Walk, float]:
        """The rule's result for ``q`` and its expected cost."""
        quota = self.rule.quota(q)
        key = quota.tobytes()
        hit = self._memo.get(key)
        if hit is None:
            walk = self.rule.walk(quota)
            hit = (walk, walk.cost(self.exit_mflops))
            self._memo[key] = hit
        return hit

    def grid(self) -> list[tuple[float, Walk, float]]:
        if self._grid is None:
            self._grid = [(float(q), *self.evaluate(float(q))) for q in _GRID]
        return self._grid

    def solve(self, target_mflops: float) -> Solution:
        target = check_target(target_mflops, self.exit_mflops)
        grid = self.grid()
        tried = list(grid)
        # Every grid interval whose ends straddle the target holds a step across it; where
        # the curve is monotone there is exactly one.
        for (q_lo, _, c_lo), (q_hi, _, c_hi) in itertools.pairwise(grid):
            if c_lo <= target < c_hi:
                tried += self._bisect(q_lo, q_hi, target)
        feasible = [t for t in tried if t[2] <= target]
        if not feasible:  # only with pathological ties: nothing as cheap as the target
            raise BudgetError(
                f"budget {target:g} MFLOPs cannot be met on this held-out split (the cheapest "
                f"q gives {min(t[2] for t in tried):.4g} MFLOPs)"
            )
        # Largest cost; among equal costs the smallest q, so the answer is deterministic.
        q, walk, cost = max(feasible, key=lambda t: (t[2], -t[0]))
        return Solution(target_mflops=float(target_mflops), q=q, walk=walk, achieved_mflops=cost)

    def _bisect(self, q_lo: float, q_hi: float, target: float) -> list[tuple[float, Walk, float]]:
        """Bisect in log q between a feasible and an infeasible end; every point tried."""
        tried = []
        lo, hi = math.log(q_lo), math.log(q_hi)
        while hi - lo > _BISECT_RTOL:
            mid = (lo + hi) / 2
            q = math.exp(mid)
            walk, cost = self.evaluate(q)
            tried.append((q, walk, cost))
            if cost <= target:
                lo = mid
            else:
                hi = mid
        return tried
