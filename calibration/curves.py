"""Accuracy-against-cost curves read from a :class:`Calibration` (for the report and the plot)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exitwise.bundle import Calibration


@dataclass(frozen=True)
class Curve:
    """One model's dynamic curve, anytime points and operating points on one split."""

    label: str
    split: str  # "test" or "held-out"
    dynamic: list[tuple[float, float]]  # (MFLOPs, top-1 %), sorted by cost
    anytime: list[tuple[int, float, float]]  # (exit, MFLOPs, top-1 %)
    points: list[tuple[str, float, float]]  # (name, MFLOPs, top-1 %)

    def accuracy_at(self, mflops: float) -> float | None:
        """Top-1 at ``mflops`` by linear interpolation on the dynamic curve (None outside it)."""
        if not self.dynamic:
            return None
        x = np.array([p[0] for p in self.dynamic])
        y = np.array([p[1] for p in self.dynamic])
        if mflops < x[0] - 1e-9 or mflops > x[-1] + 1e-9:
            return None
        return float(np.interp(mflops, x, y))


def curve(calibration: Calibration, label: str) -> Curve:
    """Test figures when the calibration has them, else held-out ones."""
    has_test = all(s.test_accuracy is not None for s in calibration.sweep) and all(
        p.test is not None for p in calibration.operating_points
    )
    dynamic: list[tuple[float, float]] = []
    points: list[tuple[str, float, float]] = []
    for s in calibration.sweep:
        if has_test and s.test_mflops is not None and s.test_accuracy is not None:
            dynamic.append((s.test_mflops, s.test_accuracy))
        else:
            dynamic.append((s.heldout_mflops, s.heldout_accuracy))
    for p in calibration.operating_points:
        split = p.test if has_test and p.test is not None else p.heldout
        points.append((p.name, split.mflops, split.accuracy))
    dynamic += [(m, a) for _, m, a in points]
    dynamic.sort()
    anytime = [
        (
            a.exit,
            a.mflops,
            a.test_top1 if has_test and a.test_top1 is not None else a.heldout_top1,
        )
        for a in calibration.anytime
    ]
    return Curve(
        label=label,
        split="test" if has_test else "held-out",
        dynamic=dynamic,
        anytime=anytime,
        points=points,
    )
