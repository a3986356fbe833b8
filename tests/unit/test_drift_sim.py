"""bench drift's simulation: every operating point is measured against its own thresholds."""

from __future__ import annotations

import numpy as np

from benchmarks.drift_sim import Simulator, simulate
from exitwise.bundle import Calibration, ControlPoint, OperatingPoint, SplitResult
from exitwise.policy import decide_exits

EXIT_MFLOPS = [1.0, 3.0]


def _cost(conf: np.ndarray, thresholds: list[float | None]) -> float:
    point = ControlPoint(mflops=0.0, thresholds=thresholds)
    return float(np.asarray(EXIT_MFLOPS)[decide_exits(conf, point.threshold_array())].mean())


def _setup() -> tuple[Calibration, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    heldout = rng.uniform(0, 1, (4000, 2))
    # The shift lowers exit 1's confidence: more images go on to exit 2.
    shifted = heldout * np.array([0.8, 1.0])
    traffic = {"heldout": heldout, "test": heldout[:2000], "shift": shifted}
    grid = [[float(t), None] for t in np.linspace(0.05, 0.95, 91)]
    control = sorted(
        (ControlPoint(mflops=_cost(heldout, t), thresholds=t) for t in grid),
        key=lambda c: c.mflops,
    )
    points = []
    for name, t in (("cheap", 0.3), ("dear", 0.7)):
        cost = _cost(heldout, [t, None])
        split = SplitResult(accuracy=90.0, mflops=cost, exit_fractions=[0.5, 0.5], images=4000)
        points.append(OperatingPoint(name=name, q=1.0, thresholds=[t, None], heldout=split))
    cal = Calibration(
        weights_sha256="a" * 64,
        heldout_sha256="b" * 64,
        created="2026-01-01T00:00:00+00:00",
        exit_mflops=EXIT_MFLOPS,
        operating_points=points,
        default_operating_point="cheap",
        control=control,
    )
    return cal, traffic


def test_each_point_is_measured_against_its_own_thresholds() -> None:
    cal, traffic = _setup()
    result = simulate(Simulator(cal, traffic), cal.operating_points, ["shift"], ["shift"], seeds=2,
                      clean_images=2000)  # fmt: skip
    for row, point in zip(result["rows"], cal.operating_points, strict=True):
        own = _cost(traffic["shift"], point.thresholds) / point.expected_mflops - 1
        assert row["open_loop"] == np.float64(own)
        # Back on clean traffic the served thresholds cost what calibration expected: a point
        # measured against another point's thresholds would be off by their difference.
        assert row["back_median"] < 0.15
    opens = [r["open_loop"] for r in result["rows"]]
    assert opens[0] != opens[1]
