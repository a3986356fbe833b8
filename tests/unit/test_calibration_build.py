"""Building calibration.json's content, the default point, the report and the curve."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calibration.build import build_calibration, choose_default
from calibration.curves import Curve, curve
from calibration.errors import CalibrationError
from calibration.evaluate import SWEEP_QS, anytime, evaluate_thresholds
from calibration.plot import render_curve
from calibration.report import ReportContext, render_report
from calibration.synthetic import synthetic_scores
from calibration.targets import plan_targets
from exitwise.bundle import Calibration, OperatingPoint, SplitResult
from exitwise.devices import DeviceError, resolve_device
from exitwise.fileio import to_json

COSTS = [1.5, 3.5, 7.5, 12.0]
SHA = "ab" * 32


@pytest.fixture(scope="module")
def built():  # type: ignore[no-untyped-def]
    heldout = synthetic_scores(1500, 4, seed=1)
    test = synthetic_scores(2500, 4, seed=2)
    targets = plan_targets([3.0, 9.0], [0.5], COSTS)
    cal, solved = build_calibration(
        weights_sha256=SHA,
        heldout_sha256=SHA,
        exit_mflops=COSTS,
        heldout=heldout,
        test=test,
        targets=targets,
    )
    return heldout, test, cal, solved


def test_calibration_is_complete_and_strict_json(built) -> None:  # type: ignore[no-untyped-def]
    heldout, test, cal, solved = built
    text = to_json(cal.model_dump(mode="json"))  # refuses NaN and infinities
    again = Calibration.model_validate(json.loads(text))
    assert again == cal
    assert [p.name for p in cal.operating_points] == ["budget-3.00", "fraction-0.50", "budget-9.00"]
    assert [s.q for s in cal.sweep] == list(SWEEP_QS) and len(cal.sweep) == 39
    assert [a.exit for a in cal.anytime] == [1, 2, 3, 4]
    assert cal.anytime[0].test_top5 is not None
    for point, s in zip(cal.operating_points, solved, strict=True):
        assert point.heldout.mflops <= point.target_mflops  # type: ignore[operator]
        assert point.heldout.mflops >= 0.99 * point.target_mflops  # type: ignore[operator]
        assert point.thresholds[-1] is None
        # What is stored is what the core rule gives with the stored thresholds.
        ev = evaluate_thresholds(heldout, point.threshold_array(), COSTS)
        assert ev.accuracy == point.heldout.accuracy
        assert ev.fractions == point.heldout.exit_fractions
        assert point.test is not None
        assert evaluate_thresholds(test, point.threshold_array(), COSTS).mflops == point.test.mflops
        assert s.solution.q == point.q


def test_anytime_top5_at_least_top1(built) -> None:  # type: ignore[no-untyped-def]
    heldout, *_ = built
    result = anytime(heldout)
    assert all(t5 >= t1 for t1, t5 in zip(result.top1, result.top5, strict=True))


def test_unknown_default_refused(built) -> None:  # type: ignore[no-untyped-def]
    heldout, test, *_ = built
    with pytest.raises(CalibrationError, match="not one of the operating points"):
        build_calibration(
            weights_sha256=SHA,
            heldout_sha256=SHA,
            exit_mflops=COSTS,
            heldout=heldout,
            test=test,
            targets=plan_targets([3.0], [], COSTS),
            default="budget-4.00",
        )


def _point(name: str, mflops: float, acc: float) -> OperatingPoint:
    split = SplitResult(accuracy=acc, mflops=mflops, exit_fractions=[0.5, 0.5], images=10)
    return OperatingPoint(name=name, q=1.0, thresholds=[0.5, None], heldout=split)


def test_default_is_the_cheapest_point_near_the_best() -> None:
    points = [_point("a", 2.0, 80.0), _point("b", 4.0, 89.7), _point("c", 8.0, 90.0)]
    assert choose_default(points) == "b"
    assert choose_default(points[:1]) == "a"
    assert choose_default([_point("x", 2.0, 70.0), _point("y", 3.0, 90.0)]) == "y"


def test_report_and_curve(built) -> None:  # type: ignore[no-untyped-def]
    heldout, test, cal, _ = built
    own = curve(cal, "model-a")
    other = curve(cal, "model-b")
    ctx = ReportContext(
        bundle_name="model-a",
        dataset="fashion-mnist",
        heldout_images=heldout.images,
        test_images=test.images,
        command="exitwise calibrate b --budgets 3,9 --fractions 0.5",
    )
    report = render_report(cal, ctx, own, [other])
    needles = [
        "## Operating points",
        "## Anytime",
        "## Dynamic",
        f"**{cal.default_operating_point}**",
        "Comparison with `model-b`",
        "exitwise calibrate b --budgets 3,9",
    ]
    for needle in needles:
        assert needle in report
    assert report.count("\n| 0.") + report.count("\n| 1.") >= 39  # every sweep row
    # A model compared with itself differs by nothing.
    assert "+0.00" in report
    png = render_curve([own, other], "model-a on fashion-mnist")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_curve_interpolation() -> None:
    c = Curve(label="m", split="test", dynamic=[(1.0, 80.0), (3.0, 90.0)], anytime=[], points=[])
    assert c.accuracy_at(2.0) == pytest.approx(85.0)
    assert c.accuracy_at(0.5) is None and c.accuracy_at(3.5) is None
    assert np.isclose(c.accuracy_at(3.0), 90.0)  # type: ignore[arg-type]


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "mps", "cuda:x"):
        with pytest.raises(DeviceError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")
