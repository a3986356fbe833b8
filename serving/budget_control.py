"""Budget control in the server: one :class:`~serving.control.BudgetController` per operating
point, the plans it changes, and its metrics.

- :meth:`BudgetControl.plan` gives a request of an operating point the thresholds its
  controller serves now (the calibrated ones until it has moved). Requests that opt out
  (``budget_control=off``) and anytime requests keep calibrated thresholds.
- :meth:`BudgetControl.observe` feeds the controller the cost of each image served with the
  point's thresholds and no exit cap (a cap would make the images look cheaper than the
  thresholds make them); opted-out requests count in the MFLOPs spent, not for the controller.
- Metrics are read from the controllers when Prometheus scrapes (a collector), so a request
  pays nothing for them: ``realised_mflops_per_image{operating_point}`` (the last ``window``
  images), ``mflops_spent_total{operating_point}``, ``budget_control_mflops{operating_point}``
  (the held-out budget whose thresholds are served) and
  ``budget_control_adjustments_total{operating_point,direction}``.

The state lives in memory only: a restart serves the calibrated thresholds again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exitwise.bundle import Calibration, OperatingPoint

from .budgets import ExitPlan
from .control import BudgetController, ControlSettings, ControlTable, Move

log = logging.getLogger("exitwise.serving.control")


class _PointState:
    def __init__(self, point: OperatingPoint, controller: BudgetController) -> None:
        self.point = point
        self.controller = controller
        self.calibrated = point.threshold_array()
        self.thresholds = self.calibrated  # what is served now
        self.spent = 0.0
        self.images = 0
        self.up = 0  # moves to a dearer budget
        self.down = 0


class BudgetControl:
    def __init__(
        self,
        calibration: Calibration | None,
        points: Sequence[OperatingPoint],
        settings: ControlSettings,
        enabled: bool,
    ) -> None:
        self.settings = settings
        self.available = calibration is not None and bool(calibration.control)
        self.enabled = enabled and self.available
        self.table: ControlTable | None = None
        self._points: dict[str, _PointState] = {}
        if calibration is None or not calibration.control:
            if enabled and calibration is not None:
                log.warning(
                    "budget control is unavailable: calibration.json was made before it existed "
                    "(no control table); re-run `exitwise calibrate` to enable it"
                )
            return
        rows = calibration.control
        self.table = ControlTable([r.mflops for r in rows], [r.threshold_array() for r in rows])
        # Never cheaper than the cheapest point calibration evaluated, never dearer than the
        # last exit.
        cheapest = min([s.heldout_mflops for s in calibration.sweep] + [rows[0].mflops])
        bounds = (max(cheapest, rows[0].mflops), float(calibration.exit_mflops[-1]))
        for p in points:
            ctl = BudgetController(p.expected_mflops, bounds, settings)
            self._points[p.name] = _PointState(p, ctl)

    # --- the request path -------------------------------------------------------------------

    def plan(self, plan: ExitPlan, allowed: bool | None = None) -> ExitPlan:
        """``plan`` with its point's current thresholds; ``allowed=False``: the request opts out."""
        if allowed is False:
            return dataclasses.replace(plan, control=False)
        state = self._points.get(plan.operating_point or "")
        if not self.enabled or state is None or not state.controller.moved:
            return plan
        return dataclasses.replace(
            plan,
            thresholds=state.thresholds,
            controlled=True,
            control_mflops=state.controller.budget,
        )

    def observe(self, plan: ExitPlan, costs: Sequence[float]) -> None:
        """The costs (MFLOPs) of a request's images, served with ``plan``."""
        state = self._points.get(plan.operating_point or "")
        if state is None or plan.max_exit is not None:
            return
        state.spent += sum(costs)
        state.images += len(costs)
        if not self.enabled:
            state.controller.record(costs)  # the realised cost stays visible with control off
            return
        if not plan.control:
            return
        move = state.controller.observe(costs)
        if move is not None:
            self._apply(state, move)

    def _apply(self, state: _PointState, move: Move) -> None:
        assert self.table is not None
        ctl = state.controller
        if ctl.budget == ctl.target:
            state.thresholds = state.calibrated
        else:
            state.thresholds, _ = self.table.at(ctl.budget)
        if move.budget > move.previous:
            state.up += 1
        else:
            state.down += 1
        log.info(
            "budget control: %s realised %.4g MFLOPs per image over %d images (target %.4g); "
            "now serving the thresholds of a %.4g MFLOPs held-out budget (was %.4g)",
            state.point.name,
            move.realised,
            move.images,
            ctl.target,
            move.budget,
            move.previous,
        )

    # --- description -------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any]:
        """What ``/v1/model`` shows of one operating point's control."""
        state = self._points.get(name)
        if state is None:
            return {"controlled": False, "current_thresholds": None, "control_mflops": None}
        ctl = state.controller
        return {
            "controlled": self.enabled and ctl.moved,
            "current_thresholds": _json(state.thresholds),
            "control_mflops": ctl.budget,
            "realised_mflops": ctl.realised(),
            "adjustments": ctl.moves,
        }

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_Collector(self))

    def states(self) -> list[_PointState]:
        return list(self._points.values())


def _json(thresholds: np.ndarray) -> list[float | None]:
    out: list[float | None] = [None if np.isinf(t) else float(t) for t in thresholds]
    out[-1] = None
    return out


class _Collector(Collector):
    """Reads the controllers at scrape time."""

    def __init__(self, control: BudgetControl) -> None:
        self.control = control

    def collect(self) -> Iterator[Metric]:
        realised = GaugeMetricFamily(
            "exitwise_realised_mflops_per_image",
            "Mean MFLOPs per image over the last window of images served with the point.",
            labels=["operating_point"],
        )
        spent = CounterMetricFamily(
            "exitwise_mflops_spent",
            "MFLOPs spent on images served with the point (no exit cap).",
            labels=["operating_point"],
        )
        budget = GaugeMetricFamily(
            "exitwise_budget_control_mflops",
            "Held-out budget whose thresholds the point serves (its expected cost: not moved).",
            labels=["operating_point"],
        )
        moves = CounterMetricFamily(
            "exitwise_budget_control_adjustments",
            "Moves of the point's thresholds by budget control.",
            labels=["operating_point", "direction"],
        )
        for state in self.control.states():
            name = state.point.name
            value = state.controller.realised()
            if value is not None:
                realised.add_metric([name], value)
            spent.add_metric([name], state.spent)
            budget.add_metric([name], state.controller.budget)
            moves.add_metric([name, "dearer"], state.up)
            moves.add_metric([name, "cheaper"], state.down)
        yield from (realised, spent, budget, moves)
