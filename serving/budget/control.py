"""Budget control in the server: every operating point's controller
(:mod:`serving.budget.controller`), the plans that carry its current thresholds, the answers
that feed it, and what it did, for ``/v1/model`` and the metrics."""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from exitwise.bundle import Calibration, OperatingPoint

from .controller import CALIBRATED, BudgetController, ControlSettings
from .resolve import ExitPlan
from .table import ControlTable, Traffic

log = logging.getLogger("exitwise.serving.control")


class _PointState:
    """One operating point in the server: its controller, and what it spent."""

    def __init__(self, point: OperatingPoint, controller: BudgetController | None, window: int):
        self.point = point
        self.controller = controller
        self.spent = 0.0
        self.images = 0
        self.up = 0  # moves to a dearer budget
        self.down = 0
        self._recent: deque[tuple[float, int]] = deque()  # (MFLOPs, images) per request
        self._recent_sum, self._recent_n, self._window = 0.0, 0, window

    def spend(self, mflops: float, images: int) -> None:
        self.spent += mflops
        self.images += images
        self._recent.append((mflops, images))
        self._recent_sum += mflops
        self._recent_n += images
        while self._recent_n - self._recent[0][1] >= self._window:
            old, k = self._recent.popleft()
            self._recent_sum -= old
            self._recent_n -= k

    def realised(self) -> float | None:
        """Mean cost of about the last ``window`` images served with the point."""
        return self._recent_sum / self._recent_n if self._recent_n else None


class BudgetControl:
    """Budget control in the server: plans get their point's current thresholds, answers feed
    the controllers, and what they did is there to describe and export."""

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
        if enabled and calibration is not None and not calibration.control:
            log.warning(
                "budget control is unavailable: calibration.json was made before it existed "
                "(no control table); re-run `exitwise calibrate` to enable it"
            )
        table = None
        if calibration is not None and calibration.control:
            rows = calibration.control
            table = ControlTable([r.mflops for r in rows], [r.threshold_array() for r in rows])
        self._points: dict[str, _PointState] = {}
        self._plans: dict[tuple[int, bool, int, int, bool], tuple[ExitPlan, ExitPlan]] = {}
        for p in points:
            ctl = None
            if table is not None and calibration is not None:
                ctl = BudgetController(p, calibration.exit_mflops, table, settings)
            self._points[p.name] = _PointState(p, ctl, settings.window)

    def plan(
        self, plan: ExitPlan, allowed: bool | None = None, images: int = 1, first_only: bool = False
    ) -> ExitPlan:
        """``plan`` with its point's current thresholds for a request of ``images`` images;
        ``allowed=False``: the request opts out; ``first_only``: its deadline lets its images
        reach exit 1 only, so no threshold decides what they cost."""
        state = self._points.get(plan.operating_point or "")
        ctl = state.controller if state is not None else None
        if allowed is not False and (not self.enabled or ctl is None):
            return plan
        controlled = allowed is not False and ctl is not None and ctl.moved
        # A turn of the dither only for a request whose cost the thresholds decide. A capped
        # request never feeds the controller (observe): interleaved with the uncapped ones,
        # capped requests took the dearer row's turns, and the uncapped got all or none of the
        # share promised. One held to exit 1 by its deadline (under load, most) took them too,
        # for images that leave there whatever the row.
        turn = controlled and plan.max_exit is None and not first_only
        row = CALIBRATED
        if controlled and ctl is not None:
            row = ctl.next_row(images) if turn else ctl.row
        key = (id(plan), allowed is False, ctl.epoch if ctl is not None else -1, row, turn)
        known = self._plans.get(key)
        if known is not None and known[0] is plan:  # the same plan object, not a reused id
            return known[1]
        if allowed is False:
            served = dataclasses.replace(plan, control=False)
        elif controlled and ctl is not None:
            served = dataclasses.replace(
                plan,
                thresholds=ctl.thresholds_of(row),
                controlled=True,
                control_mflops=ctl.budget_of(row),
                control_epoch=ctl.epoch,
                dearer=row != ctl.row,
                dithered=turn,
            )
        else:
            served = dataclasses.replace(plan, control_epoch=ctl.epoch if ctl else -1)
        if len(self._plans) > 1024:
            self._plans.clear()
        self._plans[key] = (plan, served)
        return served

    def refund(self, plan: ExitPlan, images: int) -> None:
        """A request admitted with ``plan`` (from :meth:`plan`) failed before its answer: the
        dither's turn it took is given back, while the settings that gave it still hold."""
        state = self._points.get(plan.operating_point or "")
        ctl = state.controller if state is not None else None
        if plan.dithered and ctl is not None and plan.control_epoch == ctl.epoch:
            ctl.refund(images, plan.dearer)

    def observe(self, plan: ExitPlan, mflops: Sequence[float], traffic: Traffic | None) -> None:
        """A request's images, served with ``plan``: their costs (MFLOPs) and what the engine
        recorded of them. Only a point's plans without an exit cap count (a cap makes images
        look cheaper than the thresholds make them); opted-out ones count only as spent."""
        state = self._points.get(plan.operating_point or "")
        if state is None or plan.max_exit is not None:
            return
        state.spend(sum(mflops), len(mflops))
        ctl = state.controller
        if not self.enabled or ctl is None or not plan.control or plan.control_epoch < 0:
            return
        if traffic is None:
            return
        move = ctl.observe(traffic, plan.control_epoch)
        if move is None:
            return
        state.up += move.budget > move.previous
        state.down += move.budget < move.previous
        log.info(
            "budget control: %s cost %.4g MFLOPs per image over %d images (target %.4g); now "
            "serving the thresholds of %s (held-out %.4g MFLOPs; was %.4g)",
            state.point.name,
            move.realised,
            move.images,
            ctl.target,
            "its calibration" if move.home else "a control-table row",
            move.budget,
            move.previous,
        )

    def describe(self, name: str) -> dict[str, Any]:
        """What ``/v1/model`` shows of one operating point's control."""
        state = self._points.get(name)
        ctl = state.controller if state is not None else None
        if state is None or ctl is None:
            return {"controlled": False, "current_thresholds": None, "control_mflops": None}
        dearer = None
        if ctl.share:
            dearer = {
                "share": ctl.share,
                "thresholds": _json(ctl.thresholds_of(ctl.row + 1)),
                "control_mflops": ctl.budget_of(ctl.row + 1),
            }
        return {
            "controlled": self.enabled and ctl.moved,
            "current_thresholds": _json(ctl.thresholds()),
            "control_mflops": ctl.mixed_budget,
            "dithered": dearer,
            "realised_mflops": state.realised(),
            # The moves /metrics counts: those that changed the held-out cost (a decision
            # that kept it, the estimate asked again, is no adjustment).
            "adjustments": state.up + state.down,
        }

    def states(self) -> list[_PointState]:
        return list(self._points.values())


def _json(thresholds: np.ndarray) -> list[float | None]:
    out: list[float | None] = [None if np.isinf(t) else float(t) for t in thresholds]
    out[-1] = None
    return out
