"""From a request's budget to the per-exit thresholds and cap its images carry (:class:`ExitPlan`).

- ``budget_mflops`` (average MFLOPs per image): the calibrated operating point with the largest
  expected cost not above the budget; a budget below the cheapest point is refused with the valid
  range.
- ``max_exit`` (1..K, "anytime"): without a budget, every image runs to exactly that exit.
- both: the operating point's thresholds, and no image goes past ``max_exit`` (a hard cap on
  top of the average budget).
- neither: the server's default (settings ``default_budget_mflops`` / ``default_max_exit``),
  else the calibration's default operating point, else, for a bundle that was never
  calibrated, the last exit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from exitwise.bundle import Calibration, OperatingPoint

from ..errors import InvalidParameterError, ServerConfigError

Source = Literal["request", "server-default", "calibration-default", "last-exit"]


@dataclass(frozen=True)
class ExitPlan:
    """What one request's images carry into the engine."""

    thresholds: np.ndarray  # float64 [K]; +inf: nobody exits there; the last entry is -inf
    max_index: int  # 0-based cap on the exit index (K-1 when uncapped)
    operating_point: str | None  # the calibrated point used, None for anytime / last exit
    expected_mflops: float | None  # calibration's expectation (held-out), when known
    budget_mflops: float | None  # the budget that picked the point
    max_exit: int | None  # the cap asked for (1-based)
    source: Source
    # Budget control (serving.budget.control): whether the request lets it act, whether it had
    # moved the operating point's thresholds (then: the held-out budget they were solved for),
    # and which of its settings served the request (-1: not under control).
    control: bool = True
    controlled: bool = False
    control_mflops: float | None = None
    control_epoch: int = -1
    dearer: bool = False  # served the dithered share's row (the next dearer one)
    dithered: bool = False  # took a turn of the dither (given back if the request fails)
    # Under load (serving.degrade): the plan the request asked for, when it got a cheaper one.
    degraded_from: str | None = None

    @property
    def name(self) -> str:
        """A short label: the operating point, ``max-exit-m`` for a cap, both joined, or
        ``exit-K`` for an uncalibrated bundle's default (the last exit)."""
        parts = []
        if self.operating_point is not None:
            parts.append(self.operating_point)
        if self.max_exit is not None:
            parts.append(f"max-exit-{self.max_exit}")
        return "+".join(parts) or f"exit-{self.max_index + 1}"

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "operating_point": self.operating_point,
            "budget_mflops": self.budget_mflops,
            "max_exit": self.max_exit,
            "expected_mflops": self.expected_mflops,
            "source": self.source,
            "controlled": self.controlled,
            "control_mflops": self.control_mflops,
            "degraded_from": self.degraded_from,
        }


class BudgetResolver:
    """Resolves budgets against one bundle's exits and calibration (None if not calibrated)."""

    def __init__(
        self,
        exit_mflops: list[float],
        calibration: Calibration | None,
        default_budget_mflops: float | None = None,
        default_max_exit: int | None = None,
    ) -> None:
        self.exit_mflops = list(exit_mflops)
        self.num_exits = len(exit_mflops)
        self.calibration = calibration
        # Cheapest first; ties keep calibration's order.
        self.points: list[OperatingPoint] = sorted(
            calibration.operating_points if calibration else [], key=lambda p: p.expected_mflops
        )
        # Degradation's steps: one point per expected cost, the one a budget of that cost gets
        # (the last of a tie). A step to a point of the same cost relieved nothing.
        last = len(self.points) - 1
        self.ladder = [
            p
            for i, p in enumerate(self.points)
            if i == last or self.points[i + 1].expected_mflops > p.expected_mflops
        ]
        if default_max_exit is not None and not 1 <= default_max_exit <= self.num_exits:
            raise ServerConfigError(
                f"default_max_exit {default_max_exit} is outside 1..{self.num_exits}"
            )
        if default_budget_mflops is not None:
            if calibration is None:
                raise ServerConfigError(
                    "default_budget_mflops needs a calibrated bundle; run `exitwise calibrate` "
                    "or use default_max_exit"
                )
            try:
                self._point_for(default_budget_mflops)
            except InvalidParameterError as err:
                raise ServerConfigError(f"default_budget_mflops: {err}") from err
        self.default_budget = default_budget_mflops
        self.default_max_exit = default_max_exit
        # Plans are immutable and requests ask for few distinct budgets: each is worked out once.
        self._plans: dict[tuple[object, ...], ExitPlan] = {}

    @property
    def budget_range(self) -> tuple[float, float] | None:
        if not self.points:
            return None
        return self.points[0].expected_mflops, self.points[-1].expected_mflops

    def _point_for(self, budget: float) -> OperatingPoint:
        if not self.points:
            raise InvalidParameterError(
                f"this model is not calibrated, so budget_mflops is unavailable; use max_exit "
                f"(1..{self.num_exits}) instead"
            )
        fitting = [p for p in self.points if p.expected_mflops <= budget]
        if not fitting:
            lo, hi = self.points[0].expected_mflops, self.points[-1].expected_mflops
            # Rounded up, so that the figure the message gives is itself a valid budget.
            floor = math.ceil(lo * 1000) / 1000
            raise InvalidParameterError(
                f"budget_mflops {budget:g} is below the cheapest operating point "
                f"({lo:.6g} MFLOPs); valid budgets are >= {floor:.15g} (operating points span "
                f"{lo:.6g} to {hi:.6g} MFLOPs; exit 1 alone costs "
                f"{self.exit_mflops[0]:.6g}, use max_exit=1 for that)"
            )
        return fitting[-1]

    def resolve(self, budget_mflops: float | None = None, max_exit: int | None = None) -> ExitPlan:
        """The plan for a request; raises :class:`InvalidParameterError` for a bad budget."""
        key = ("resolve", budget_mflops, max_exit)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._remember(key, self._resolve(budget_mflops, max_exit))
        return plan

    def _remember(self, key: tuple[object, ...], plan: ExitPlan) -> ExitPlan:
        if len(self._plans) > 1024:  # a client cycling through budgets: start again
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _resolve(self, budget_mflops: float | None, max_exit: int | None) -> ExitPlan:
        source: Source = "request"
        if budget_mflops is None and max_exit is None:
            budget_mflops, max_exit = self.default_budget, self.default_max_exit
            source = "server-default"
            if budget_mflops is None and max_exit is None:
                if self.calibration is not None:
                    point = self.calibration.point(self.calibration.default_operating_point)
                    return self._plan(point, None, None, "calibration-default")
                return self._plan(None, None, None, "last-exit")
        if budget_mflops is not None and not (math.isfinite(budget_mflops) and budget_mflops > 0):
            raise InvalidParameterError(
                f"budget_mflops must be a positive number, not {budget_mflops}"
            )
        if max_exit is not None and not 1 <= max_exit <= self.num_exits:
            raise InvalidParameterError(
                f"max_exit must be between 1 and {self.num_exits}, not {max_exit}"
            )
        chosen = None if budget_mflops is None else self._point_for(budget_mflops)
        return self._plan(chosen, budget_mflops, max_exit, source)

    def degrade(self, plan: ExitPlan, level: int) -> ExitPlan:
        """``plan`` ``level`` calibrated points cheaper (the cheapest at most).

        The ladder is the calibrated points, cheapest first, one per expected cost
        (:attr:`ladder`), with the plan's own place on it:
        its operating point, or, for an anytime plan (an exit cap without a budget, or the last
        exit), just above the points cheaper than its exit. A cap the request set stays.
        """
        if level <= 0 or not self.points:
            return plan
        key = ("degrade", plan.name, plan.budget_mflops, plan.source, plan.control, level)
        cheaper = self._plans.get(key)
        if cheaper is None:
            cheaper = self._remember(key, self._degrade(plan, level))
        return cheaper

    def _degrade(self, plan: ExitPlan, level: int) -> ExitPlan:
        if plan.operating_point is not None:
            point = next(p for p in self.points if p.name == plan.operating_point)
            cost = point.expected_mflops
        else:
            cost = self.exit_mflops[plan.max_index]
        place = sum(p.expected_mflops < cost for p in self.ladder)  # the steps cheaper than it
        target = max(0, place - level)
        if target >= place:
            return plan
        cheaper = self._plan(self.ladder[target], plan.budget_mflops, plan.max_exit, plan.source)
        return dataclasses.replace(cheaper, control=plan.control, degraded_from=plan.name)

    def _plan(
        self,
        point: OperatingPoint | None,
        budget: float | None,
        max_exit: int | None,
        source: Source,
    ) -> ExitPlan:
        k = self.num_exits
        if point is not None:
            thresholds = point.threshold_array()
        else:
            # Anytime: nobody leaves by confidence, the cap decides the exit.
            thresholds = np.full(k, math.inf, dtype=np.float64)
            thresholds[-1] = -math.inf
        cap = (max_exit if max_exit is not None else k) - 1
        if point is not None:
            expected = point.expected_mflops if max_exit is None else None
        else:
            expected = self.exit_mflops[cap]
        thresholds.setflags(write=False)
        return ExitPlan(
            thresholds=thresholds,
            max_index=cap,
            operating_point=point.name if point is not None else None,
            expected_mflops=expected,
            budget_mflops=budget,
            max_exit=max_exit,
            source=source,
        )
