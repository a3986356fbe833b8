"""Budgets to exit plans, request parameters, the error table and settings validation."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from starlette.requests import ClientDisconnect

from exitwise.bundle import Calibration, OperatingPoint, SplitResult
from exitwise.preprocess import ImageTooLargeError, InvalidImageError
from serving.budget.resolve import BudgetResolver
from serving.errors import (
    REFUSAL,
    STATUS,
    BadRequestError,
    ClientGoneError,
    DeadlineExceededError,
    DeadlineUnmeetableError,
    InvalidParameterError,
    ModelNotFoundError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    ServerConfigError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    response_for,
    status_of,
)
from serving.params import merge_fields, parse_params
from serving.settings import Settings

EXIT_MFLOPS = [1.0, 2.0, 3.0, 4.0]


def _point(name: str, mflops: float, thresholds: list[float | None]) -> OperatingPoint:
    split = SplitResult(accuracy=90.0, mflops=mflops, exit_fractions=[0.25] * 4, images=100)
    return OperatingPoint(name=name, q=1.0, thresholds=thresholds, heldout=split)


def _calibration() -> Calibration:
    points = [
        _point("mid", 2.5, [0.9, 0.8, 0.7, None]),
        _point("low", 1.5, [0.5, 0.4, None, None]),
        _point("high", 3.5, [0.99, 0.98, 0.97, None]),
    ]
    return Calibration(
        weights_sha256="a" * 64,
        heldout_sha256="b" * 64,
        created="2024-01-01T00:00:00+00:00",
        exit_mflops=EXIT_MFLOPS,
        operating_points=points,
        default_operating_point="mid",
    )


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(1.5, "low"), (2.49, "low"), (2.5, "mid"), (3.0, "mid"), (3.5, "high"), (100.0, "high")],
)
def test_budget_picks_the_most_expensive_point_that_fits(budget: float, expected: str) -> None:
    plan = BudgetResolver(EXIT_MFLOPS, _calibration()).resolve(budget_mflops=budget)
    assert plan.operating_point == expected
    point = _calibration().point(expected)
    np.testing.assert_array_equal(plan.thresholds, point.threshold_array())
    assert plan.max_index == 3 and plan.expected_mflops == point.expected_mflops
    assert plan.budget_mflops == budget and plan.source == "request"


def test_budget_below_the_cheapest_point_names_the_valid_range() -> None:
    with pytest.raises(InvalidParameterError) as err:
        BudgetResolver(EXIT_MFLOPS, _calibration()).resolve(budget_mflops=1.2)
    assert "1.2" in str(err.value) and ">= 1.5" in str(err.value) and "3.5" in str(err.value)


def test_the_least_budget_a_refusal_gives_is_itself_taken() -> None:
    # A model whose points cost over 1000 MFLOPs: the floor, rounded up to a thousandth, once
    # came out rounded back down to 6 significant digits, and the figure given was refused.
    costs = [1000.0, 2000.0, 3000.0, 4100.0]
    points = [
        _point("cheap", 1500.0001, [0.9, 0.8, 0.7, None]),
        _point("dear", 3000.5, [0.99, 0.98, 0.97, None]),
    ]
    cal = _calibration().model_copy(
        update={
            "exit_mflops": costs,
            "operating_points": points,
            "default_operating_point": "cheap",
        }
    )
    resolver = BudgetResolver(costs, cal)
    with pytest.raises(InvalidParameterError) as err:
        resolver.resolve(budget_mflops=1000.0)
    found = re.search(r"valid budgets are >= (\S+) ", str(err.value))
    assert found is not None and found[1] == "1500.001"
    assert resolver.resolve(budget_mflops=float(found[1])).operating_point == "cheap"


def test_max_exit_alone_is_anytime() -> None:
    plan = BudgetResolver(EXIT_MFLOPS, _calibration()).resolve(max_exit=2)
    assert plan.operating_point is None and plan.max_index == 1 and plan.name == "max-exit-2"
    assert np.isposinf(plan.thresholds[:-1]).all() and plan.thresholds[-1] == -math.inf
    assert plan.expected_mflops == 2.0


def test_budget_and_max_exit_combine() -> None:
    plan = BudgetResolver(EXIT_MFLOPS, _calibration()).resolve(budget_mflops=3.0, max_exit=3)
    assert plan.operating_point == "mid" and plan.max_index == 2
    assert plan.name == "mid+max-exit-3" and plan.expected_mflops is None


def test_defaults() -> None:
    cal = _calibration()
    assert BudgetResolver(EXIT_MFLOPS, cal).resolve().operating_point == "mid"
    assert BudgetResolver(EXIT_MFLOPS, cal).resolve().source == "calibration-default"
    server = BudgetResolver(EXIT_MFLOPS, cal, default_budget_mflops=2.0).resolve()
    assert server.operating_point == "low" and server.source == "server-default"
    capped = BudgetResolver(EXIT_MFLOPS, cal, default_max_exit=1).resolve()
    assert capped.max_index == 0 and capped.operating_point is None
    # A request's own budget replaces the server default entirely.
    assert BudgetResolver(EXIT_MFLOPS, cal, default_max_exit=1).resolve(max_exit=4).max_index == 3


def test_uncalibrated_bundle_serves_the_last_exit() -> None:
    resolver = BudgetResolver(EXIT_MFLOPS, None)
    plan = resolver.resolve()
    assert plan.source == "last-exit" and plan.max_index == 3 and plan.name == "exit-4"
    assert resolver.resolve(max_exit=1).max_index == 0
    with pytest.raises(InvalidParameterError, match="not calibrated"):
        resolver.resolve(budget_mflops=3.0)


@pytest.mark.parametrize(
    "kwargs", [{"max_exit": 0}, {"max_exit": 5}, {"budget_mflops": -1.0}, {"budget_mflops": 0.0}]
)
def test_bad_request_budgets(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidParameterError):
        BudgetResolver(EXIT_MFLOPS, _calibration()).resolve(**kwargs)  # type: ignore[arg-type]


def test_bad_server_defaults_fail_at_start() -> None:
    with pytest.raises(ServerConfigError, match="default_max_exit"):
        BudgetResolver(EXIT_MFLOPS, _calibration(), default_max_exit=9)
    with pytest.raises(ServerConfigError, match="default_budget_mflops"):
        BudgetResolver(EXIT_MFLOPS, _calibration(), default_budget_mflops=1.0)
    with pytest.raises(ServerConfigError, match="calibrated"):
        BudgetResolver(EXIT_MFLOPS, None, default_budget_mflops=3.0)


def test_params_parse_and_merge() -> None:
    fields = merge_fields([("budget_mflops", "2.5")], [("max_exit", "3"), ("top_k", "2")])
    params = parse_params(fields)
    assert (params.budget_mflops, params.max_exit, params.top_k) == (2.5, 3, 2)
    assert parse_params({"budget_mflops": ""}).budget_mflops is None
    assert parse_params({"timeout_ms": "250"}).timeout_s == pytest.approx(0.25)
    v2 = parse_params({"timeout": 2000, "max_exit": 2.0}, timeout_key="timeout", timeout_per_s=1e6)
    assert v2.timeout_s == pytest.approx(0.002) and v2.max_exit == 2
    # The same time in either unit is the same float as deadline_ms's: a deadline equal to the
    # timeout is one (times 1e-6, 50,000 us came to 0.049999999999999996 s).
    for ms in range(1, 100_001):
        v2 = parse_params({"timeout": ms * 1000, "deadline_ms": ms}, "timeout", 1e6)
        assert v2.timeout_s == v2.deadline_s == parse_params({"timeout_ms": ms}).timeout_s
    with pytest.raises(InvalidParameterError, match="unknown query parameter 'budget'"):
        merge_fields([("budget", "1")], [])
    with pytest.raises(InvalidParameterError, match="twice"):
        merge_fields([("max_exit", "1")], [("max_exit", "2")])
    # The same value written two ways is given once (it was "given twice with different
    # values"); an integer written "2.0" is one in v1's text as in v2's JSON (v1 refused it).
    same = merge_fields([("budget_mflops", "1.5"), ("degrade", "on")], [("budget_mflops", "1.50")])
    assert parse_params(same).budget_mflops == 1.5
    assert parse_params(merge_fields([("degrade", "on")], [("degrade", "true")])).degrade
    assert parse_params({"max_exit": "2.0", "top_k": " 3e0 "}).max_exit == 2
    assert parse_params({"top_k": "3e0"}).top_k == 3
    # A bad value given twice, or beside a good one, is refused for what is wrong with it.
    with pytest.raises(InvalidParameterError, match="must be a number, not 'abc'"):
        merge_fields([("budget_mflops", "1.5")], [("budget_mflops", "abc")])
    with pytest.raises(InvalidParameterError, match="must be positive, not '-5'"):
        merge_fields([("deadline_ms", "-5")], [("deadline_ms", "-5.0")])
    # An empty value is absent, as parse_params says: not a second, different one.
    assert merge_fields([("max_exit", ""), ("max_exit", "2")], [("top_k", " ")]) == {
        "max_exit": "2"
    }
    for bad in (
        {"budget_mflops": "abc"},
        {"max_exit": "1.5"},
        {"max_exit": True},
        {"top_k": "inf"},
    ):
        with pytest.raises(InvalidParameterError):
            parse_params(bad)
    # A JSON integer of 400 digits (v2's parameters) overflowed float(): a 500.
    for huge in ("budget_mflops", "deadline_ms", "timeout_ms"):
        with pytest.raises(InvalidParameterError, match="must be a number"):
            parse_params({huge: 10**400})
    for bad in ({"budget_mflops": "nan"}, {"timeout_ms": "0"}):
        with pytest.raises(InvalidParameterError):
            parse_params(bad)


def test_error_table() -> None:
    expected = {
        BadRequestError: 400,
        InvalidImageError: 400,
        UnauthorizedError: 401,
        ModelNotFoundError: 404,
        NotFoundError: 404,
        PayloadTooLargeError: 413,
        ImageTooLargeError: 413,
        UnsupportedMediaTypeError: 415,
        InvalidParameterError: 422,
        QueueFullError: 503,
        DeadlineUnmeetableError: 503,
        NotReadyError: 503,
        DeadlineExceededError: 504,
        ClientGoneError: 499,
        ClientDisconnect: 499,  # Starlette's: the client left while sending its body
    }
    assert expected == STATUS
    made = {
        cls: cls("x", 2.5, "deadline_shed") if cls is DeadlineUnmeetableError else cls("x")
        for cls in expected
    }
    assert all(status_of(made[cls]) == status for cls, status in expected.items())
    assert made[DeadlineUnmeetableError].response_headers() == {"Retry-After": "3"}
    # The 503s the server chose say why (exitwise_refused_total), through the request's scope.
    refusals = {cls: getattr(err, "refusal", None) for cls, err in made.items()}
    assert {cls: r for cls, r in refusals.items() if r} == {
        QueueFullError: "queue_full",
        DeadlineUnmeetableError: "deadline_shed",
        NotReadyError: "not_ready",
    }
    scope: dict[str, object] = {}
    assert response_for(made[DeadlineUnmeetableError], scope) is not None
    assert scope == {REFUSAL: "deadline_shed"}
    assert response_for(made[InvalidParameterError], scope := {}) is not None and not scope
    assert status_of(RuntimeError("boom")) is None
    assert QueueFullError.headers == {"Retry-After": "1"}


def test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setenv("EXITWISE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("EXITWISE_API_KEY", "")
    settings = Settings(bundle=tmp_path, max_wait_ms=5)
    assert settings.max_batch_size == 7 and settings.max_wait_s == 0.005
    assert settings.api_key is None and not settings.auth_enabled
    assert Settings(bundle=tmp_path, max_batch_size=3).max_batch_size == 3  # arguments win
    for bad in (
        {"bundle": tmp_path / "missing"},
        {"bundle": tmp_path.parent},
        {"bundle": tmp_path, "default_budget_mflops": 0},
        {"bundle": tmp_path, "max_images_per_request": 10, "max_queue_images": 5},
        {"bundle": tmp_path, "device": "cpu", "require_gpu": True},
        {"bundle": tmp_path, "metrics_require_key": True},
        {"bundle": tmp_path, "backend": "tensorrt"},
    ):
        with pytest.raises(ValueError):
            Settings(**bad)  # type: ignore[arg-type]
