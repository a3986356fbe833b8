"""The budget solver: from a target average cost (MFLOPs per image) to q and thresholds.

The expected cost on the held-out split is a step function of q: it depends on q only through
the quota vector floor(n p_k(q)). It rises with q overall (a larger q moves the exit distribution
to later exits) but floors and ties can make single steps go backwards. The solver therefore

1. evaluates a fixed log-spaced grid of q from 1e-15 (everyone leaves at exit 1) to 1e15 (everyone
   reaches the last exit) and takes the highest grid interval whose ends straddle the target,
2. bisects that interval in log q down to a relative width of 1e-12, and
3. returns, among every q it evaluated for this target (grid and bisection), the one with the
   largest expected cost that does not exceed the target.

The result never exceeds the target, and on a split of n images it is within one image's move
between two exits of the target, unless ties make the curve jump (then no q does better among
those tried). Results for a target do not depend on which other targets were solved before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import BudgetError
from .thresholds import ThresholdRule, Walk

Q_MIN = 1e-15
Q_MAX = 1e15
_GRID = np.logspace(math.log10(Q_MIN), math.log10(Q_MAX), 121)
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


def check_target(
    target: float, exit_mflops: Sequence[float] | np.ndarray, what: str = "budget"
) -> float:
    """``target`` as a float inside [exit 1's cost, the last exit's cost], or a BudgetError."""
    low, high = cost_range(exit_mflops)
    if not isinstance(target, (int, float)) or math.isnan(target):
        raise BudgetError(f"{what} {target!r} is not a number")
    if target <= 0 or math.isinf(target):
        raise BudgetError(f"{what} {target:g} MFLOPs must be a positive finite number")
    if target < low * (1 - _RANGE_RTOL) or target > high * (1 + _RANGE_RTOL):
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
        # The highest grid interval that straddles the target.
        bracket = None
        for i in range(len(grid) - 1, 0, -1):
            if grid[i - 1][2] <= target < grid[i][2]:
                bracket = (grid[i - 1][0], grid[i][0])
                break
        if bracket is not None:
            lo, hi = math.log(bracket[0]), math.log(bracket[1])
            while hi - lo > _BISECT_RTOL:
                mid = (lo + hi) / 2
                q = math.exp(mid)
                walk, cost = self.evaluate(q)
                tried.append((q, walk, cost))
                if cost <= target:
                    lo = mid
                else:
                    hi = mid
        feasible = [t for t in tried if t[2] <= target]
        if not feasible:  # only with pathological ties: nothing as cheap as the target
            raise BudgetError(
                f"budget {target:g} MFLOPs cannot be met on this held-out split (the cheapest "
                f"q gives {min(t[2] for t in tried):.4g} MFLOPs)"
            )
        # Largest cost; among equal costs the smallest q, so the answer is deterministic.
        q, walk, cost = max(feasible, key=lambda t: (t[2], -t[0]))
        return Solution(target_mflops=float(target_mflops), q=q, walk=walk, achieved_mflops=cost)
