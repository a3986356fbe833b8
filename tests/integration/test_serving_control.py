"""Budget control in a served bundle: noisy traffic over HTTP is brought back to the point's
cost, /metrics and /v1/model show it, a request may opt out, a restart starts calibrated."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from cli import main
from serving import deadlines
from serving.app import create_app
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


def _noisy(served: Served, copies: int) -> np.ndarray:
    """The test images under sensor noise: fewer are confident early, so they cost more."""
    rng = np.random.default_rng(0)
    px = np.concatenate([served.test.pixels] * copies).astype(np.float32)
    return np.clip(px + rng.normal(0, 60, px.shape), 0, 255).astype(np.uint8)


def _classify(client: TestClient, pixels: np.ndarray, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for start in range(0, len(pixels), 50):
        files = [
            ("image", (f"{i}.png", png(p), "image/png"))
            for i, p in enumerate(pixels[start : start + 50])
        ]
        r = client.post(
            "/v1/classify",
            files=files,
            data={**{k: str(v) for k, v in params.items()}, "top_k": "0"},
        )
        assert r.status_code == 200, r.text
        out += [r.json()]
    return out


def test_noisy_traffic_is_brought_back_to_the_points_cost(served: Served) -> None:
    point = served.bundle.calibration().point("q1")
    target = point.expected_mflops
    registry = CollectorRegistry()
    settings = Settings(bundle=served.path, max_images_per_request=64)  # type: ignore[call-arg]
    noisy = _noisy(served, copies=40)  # 8000 images
    with TestClient(create_app(settings, registry=registry)) as client:
        answers = _classify(client, noisy, budget_mflops=target)
        costs = [r["mflops"] for a in answers for r in a["results"]]
        first = np.mean(costs[:250])
        assert first > 1.1 * target  # open loop at first: the noise makes images dearer
        assert abs(np.mean(costs[-3000:]) / target - 1) < 0.05  # back near the target
        # Responses say when control had moved the point.
        assert answers[0]["operating_point"]["controlled"] is False
        last = answers[-1]["operating_point"]
        assert last["controlled"] is True and last["control_mflops"] < target
        # /v1/model shows calibrated and current thresholds.
        model = client.get("/v1/model").json()
        described = next(p for p in model["operating_points"] if p["name"] == "q1")
        control = described["budget_control"]
        assert control["controlled"] is True and control["adjustments"] >= 1
        assert control["current_thresholds"] != described["thresholds"]
        # A request may opt out: calibrated thresholds, not counted by the controller.
        opted = _classify(client, noisy[:50], budget_mflops=target, budget_control="off")
        assert opted[0]["operating_point"]["controlled"] is False
        # /metrics: the realised cost, the knob, the moves, the MFLOPs spent.
        get = registry.get_sample_value
        labels = {"operating_point": "q1"}
        realised = get("exitwise_realised_mflops_per_image", labels)
        assert realised is not None and abs(realised / target - 1) < 0.1
        # The gauge shows the mix served (with dithering, an answer shows its own row's).
        assert get("exitwise_budget_control_mflops", labels) == pytest.approx(
            control["control_mflops"]
        )
        moves = get("exitwise_budget_control_adjustments_total", {**labels, "direction": "cheaper"})
        assert moves is not None and moves >= 1
        spent = get("exitwise_mflops_spent_total", labels)
        assert spent == pytest.approx(sum(costs) + sum(r["mflops"] for r in opted[0]["results"]))
    # A restart serves the calibrated thresholds again.
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        model = client.get("/v1/model").json()
        described = next(p for p in model["operating_points"] if p["name"] == "q1")
        assert described["budget_control"]["controlled"] is False
        assert described["budget_control"]["current_thresholds"] == described["thresholds"]


def test_control_off_serves_calibrated_thresholds_on_any_traffic(served: Served) -> None:
    point = served.bundle.calibration().point("q1")
    settings = Settings(bundle=served.path, max_images_per_request=64, budget_control="off")  # type: ignore[call-arg]
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        answers = _classify(client, _noisy(served, copies=8), budget_mflops=point.expected_mflops)
        assert not any(a["operating_point"]["controlled"] for a in answers)
        assert client.get("/v1/model").json()["budget_control"]["enabled"] is False


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--budget-control-window", "0", "budget_control_window"),
        ("--budget-control-tolerance", "-0.1", "budget_control_tolerance"),
        ("--budget-control", "sometimes", "budget_control"),
    ],
)
def test_bad_control_settings_stop_the_server_with_one_line(
    served: Served, flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(served.path), flag, value]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: invalid setting") and message in err[0]


def test_bundles_calibrated_before_control_serve_open_loop(served: Served, tmp_path: Path) -> None:
    import shutil

    from exitwise.bundle import load_bundle, write_calibration

    copy = Path(shutil.copytree(served.path, tmp_path / "old"))
    bundle = load_bundle(copy)
    write_calibration(bundle, bundle.calibration().model_copy(update={"control": []}))
    settings = Settings(bundle=copy)  # type: ignore[call-arg]
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        control = client.get("/v1/model").json()["budget_control"]
        assert control == {**control, "enabled": False, "available": False}


@contextlib.contextmanager
def _q1_client(served: Served) -> Iterator[tuple[TestClient, Any, bytes, dict[str, str]]]:
    """A server without degradation; its service, a good PNG, and the fields asking q1's
    budget."""
    point = served.bundle.calibration().point("q1")
    settings = Settings(bundle=served.path, degrade=False)  # type: ignore[call-arg]
    good, budget = png(served.test.pixels[0]), {"budget_mflops": str(point.expected_mflops)}
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        yield client, client.app.state.service, good, budget  # type: ignore[attr-defined]


def _half_on_the_dearer_row(service: Any) -> float:
    """Moves q1's control a few rows cheaper with half the images on the next dearer row (a
    new epoch); that row's held-out cost, which the answers served it report."""
    ctl = next(s for s in service.control.states() if s.point.name == "q1").controller
    ctl.row, ctl.share, ctl._credit = max(0, ctl.table.row_at(ctl.target) - 3), 0.5, 0.0
    ctl.epoch += 1
    return float(ctl.budget_of(ctl.row + 1))


def test_requests_that_fail_after_admission_give_their_dither_turn_back(served: Served) -> None:
    # A client sends a request with an undecodable image (a 400, found after admission) before
    # each good one; q1 is moved with half the images on the dearer row. The failed requests
    # took every dearer turn, and none of the 20 served requests got the share /v1/model shows.
    with _q1_client(served) as (client, service, good, budget):
        dearer, got = _half_on_the_dearer_row(service), []
        for _ in range(20):
            bad = [("image", ("bad.png", b"\x89PNG not really", "image/png"))]
            assert client.post("/v1/classify", files=bad, data=budget).status_code == 400
            r = client.post(
                "/v1/classify", files=[("image", ("ok.png", good, "image/png"))], data=budget
            )
            assert r.status_code == 200, r.text
            got.append(r.json()["operating_point"]["control_mflops"] == dearer)
        q1 = next(
            p for p in client.get("/v1/model").json()["operating_points"] if p["name"] == "q1"
        )
        assert q1["budget_control"]["dithered"]["share"] == 0.5
        assert sum(got) == 10, f"{sum(got)} of 20 served requests got the dearer row"


def test_deadline_requests_held_to_exit_1_leave_the_dither_to_the_others(served: Served) -> None:
    # Budget control with deadlines: each request without a deadline follows one whose
    # deadline admission forecasts exit 1 alone to meet (the work queued ahead, patched in
    # here). Those leave at exit 1 whatever their thresholds, yet took every other turn of the
    # dither, and the requests whose exits the thresholds decide got none of the share.
    with _q1_client(served) as (client, service, good, budget):
        k = service.engine.num_exits
        service.engine.forecast = lambda images=1, own=True: deadlines.Forecast(
            time.monotonic(), 0.0, np.array([0.001] + [10.0] * (k - 1)), 0.0
        )
        dearer, got = _half_on_the_dearer_row(service), []
        image = [("image", ("ok.png", good, "image/png"))]
        for _ in range(20):
            r = client.post("/v1/classify", files=image, data={**budget, "deadline_ms": "50"})
            assert r.status_code == 200, r.text
            assert [x["exit"] for x in r.json()["results"]] == [1]
            assert r.json()["operating_point"]["control_mflops"] != dearer
            r = client.post("/v1/classify", files=image, data=budget)
            assert r.status_code == 200, r.text
            got.append(r.json()["operating_point"]["control_mflops"] == dearer)
        assert sum(got) == 10, f"{sum(got)} of 20 requests without a deadline got the dearer row"
