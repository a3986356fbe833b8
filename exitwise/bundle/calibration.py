"""The bundle's ``calibration.json``: per-exit thresholds per operating point, bound to weights.

Thresholds are stored per exit as a number, or ``null`` for "nobody exits here" (+inf); the last
exit's entry is always ``null`` and means "takes every image still running". Use
:meth:`OperatingPoint.threshold_array` to get the array the exit rule expects.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

CALIBRATION_FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitResult(_Strict):
    """What a set of thresholds gives on one split."""

    accuracy: float = Field(ge=0, le=100)  # top-1, percent
    mflops: float = Field(ge=0)  # mean multiply-adds per image, millions
    exit_fractions: list[float]  # share of images leaving at each exit, sums to 1
    images: int = Field(ge=1)


class OperatingPoint(_Strict):
    name: str = Field(min_length=1)
    # The budget asked for (average MFLOPs per image), when the point was solved for one.
    target_mflops: float | None = None
    q: float = Field(gt=0)  # the geometric exit distribution's ratio
    thresholds: list[float | None]
    heldout: SplitResult  # calibration split: its mflops is the point's expected cost
    test: SplitResult | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OperatingPoint:
        if len(self.thresholds) < 1 or self.thresholds[-1] is not None:
            raise ValueError("the last exit's threshold must be null (it takes the rest)")
        if len(self.heldout.exit_fractions) != len(self.thresholds):
            raise ValueError("one exit fraction per exit")
        return self

    @property
    def expected_mflops(self) -> float:
        return self.heldout.mflops

    def threshold_array(self) -> np.ndarray:
        """float64 ``[K]``: +inf where nobody exits, -inf at the last exit."""
        arr = np.array(
            [math.inf if t is None else float(t) for t in self.thresholds], dtype=np.float64
        )
        arr[-1] = -math.inf
        return arr


class AnytimeExit(_Strict):
    exit: int = Field(ge=1)
    mflops: float
    heldout_top1: float
    heldout_top5: float
    test_top1: float | None = None
    test_top5: float | None = None


class SweepPoint(_Strict):
    """One point of the seed's 39-point q sweep (q = 0.05 .. 1.95)."""

    q: float
    heldout_accuracy: float
    heldout_mflops: float
    test_accuracy: float | None = None
    test_mflops: float | None = None
    exit_fractions: list[float]


class ControlPoint(_Strict):
    """Thresholds solved on the held-out split for one budget: a row of the table the server's
    budget control moves along (see ``serving.budget.controller``)."""

    mflops: float  # expected cost on the held-out split
    thresholds: list[float | None]

    def threshold_array(self) -> np.ndarray:
        arr = np.array(
            [math.inf if t is None else float(t) for t in self.thresholds], dtype=np.float64
        )
        arr[-1] = -math.inf
        return arr


class Calibration(_Strict):
    format_version: int = CALIBRATION_FORMAT_VERSION
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    heldout_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: str
    exit_mflops: list[float]
    operating_points: list[OperatingPoint] = Field(min_length=1)
    default_operating_point: str
    anytime: list[AnytimeExit] = Field(default_factory=list)
    sweep: list[SweepPoint] = Field(default_factory=list)
    # Budgets from the first exit's cost to the last's, about 1 % apart, cheapest first (empty in
    # calibrations made before budget control existed: the server then runs open loop).
    control: list[ControlPoint] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        names = [p.name for p in self.operating_points]
        if len(set(names)) != len(names):
            raise ValueError("operating point names must be unique")
        if self.default_operating_point not in names:
            raise ValueError(f"default operating point {self.default_operating_point!r} not listed")
        k = len(self.exit_mflops)
        if any(len(p.thresholds) != k for p in self.operating_points):
            raise ValueError(f"every operating point needs {k} thresholds")
        if any(len(c.thresholds) != k for c in self.control):
            raise ValueError(f"every control point needs {k} thresholds")
        if any(a.mflops > b.mflops for a, b in zip(self.control, self.control[1:], strict=False)):
            raise ValueError("control points must be ordered by cost, cheapest first")
        return self

    def point(self, name: str) -> OperatingPoint:
        for p in self.operating_points:
            if p.name == name:
                return p
        raise KeyError(name)
