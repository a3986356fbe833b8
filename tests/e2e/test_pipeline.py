"""The pipeline end to end on a tiny bundle: `exitwise calibrate` and `exitwise export` (the real
commands), then the server on both backends. What calibration simulated is what is served, image
for image, and the onnxruntime backend answers exactly as the torch backend does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from calibration.run import CalibrateOptions, CalibrateResult, run_calibration
from cli import main
from exitwise.bundle import OperatingPoint, load_bundle
from exitwise.policy import decide_exits
from serving.app import create_app
from serving.settings import Settings
from tests.helpers import make_bundle, write_fashion_mnist
from tests.serving_helpers import Split, load_split, png


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("pipeline")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 5,000 held-out and 5,000 test images, as many as a real calibration split, so that the
        # held-out expectation can be checked on the test split (sampling error ~1 %).
        data = write_fashion_mnist(root / "data", n_train=6000, n_test=5000)
        bundle = make_bundle(root / "bundle", data, heldout_size=5000)
        result = run_calibration(
            bundle.path, CalibrateOptions(data_root=data, fractions=(0.3, 0.5, 0.8), progress=False)
        )
        assert main(["export", str(bundle.path), "--data-root", str(data)]) == 0
        bundle = load_bundle(bundle.path)
        yield {
            "bundle": bundle,
            "calibration": result,
            "heldout": load_split(bundle, data, "heldout"),
            "test": load_split(bundle, data, "test"),
        }
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["torch", "onnx"])
def client(request: pytest.FixtureRequest, pipeline: dict[str, Any]) -> Iterator[TestClient]:
    settings = Settings(  # type: ignore[call-arg]
        bundle=pipeline["bundle"].path,
        backend=request.param,
        device="cpu",
        max_batch_size=16,
        budget_control="off",  # calibration's thresholds exactly (see the control-on test below)
    )
    with TestClient(create_app(settings)) as c:
        yield c


def classify(client: TestClient, pixels: np.ndarray, budget: float) -> list[dict[str, Any]]:
    """Requests of 24 images (batches of 16 and 8 in the engine, so batch sizes vary)."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(pixels), 24):
        files = [
            ("image", (f"{i}.png", png(p), "image/png"))
            for i, p in enumerate(pixels[start : start + 24])
        ]
        r = client.post(
            "/v1/classify", files=files, data={"budget_mflops": str(budget), "top_k": "0"}
        )
        assert r.status_code == 200, r.text
        out += r.json()["results"]
    return out


def _points(pipeline: dict[str, Any]) -> list[OperatingPoint]:
    return list(pipeline["bundle"].calibration().operating_points)


@pytest.mark.parametrize("split", ["heldout", "test"])
def test_served_exits_and_classes_equal_calibrations_simulation(
    client: TestClient, pipeline: dict[str, Any], split: str
) -> None:
    result: CalibrateResult = pipeline["calibration"]
    scores = result.heldout if split == "heldout" else result.test
    data: Split = pipeline[split]
    np.testing.assert_array_equal(scores.labels, data.labels)  # same images, same order
    costs = np.asarray(pipeline["bundle"].manifest.exit_mflops)
    n = 480  # served over HTTP; calibration's figures below cover the whole split
    for point in _points(pipeline):
        exits = decide_exits(scores.confidence, point.threshold_array())
        got = classify(client, data.pixels[:n], point.expected_mflops)
        assert [r["exit"] for r in got] == (exits[:n] + 1).tolist(), point.name
        chosen = scores.prediction[np.arange(n), exits[:n]]
        assert [r["class_id"] for r in got] == chosen.tolist(), point.name
        realised = float(np.mean([r["mflops"] for r in got]))
        assert realised == pytest.approx(float(costs[exits[:n]].mean()), rel=1e-9)
        # Served exits are calibration's, so the split's mean cost is what calibration reported,
        # and on the unseen test split it stays within 3 % of the held-out expectation.
        reported = point.heldout if split == "heldout" else point.test
        assert reported is not None
        assert float(costs[exits].mean()) == pytest.approx(reported.mflops, rel=1e-9)
        assert reported.mflops == pytest.approx(point.expected_mflops, rel=0.03)


def test_with_budget_control_on_clean_images_exit_as_calibration_simulated(
    pipeline: dict[str, Any],
) -> None:
    # Clean images look like the held-out split: the controllers keep the calibrated thresholds.
    settings = Settings(bundle=pipeline["bundle"].path, device="cpu")  # type: ignore[call-arg]
    result: CalibrateResult = pipeline["calibration"]
    costs = np.asarray(pipeline["bundle"].manifest.exit_mflops)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/model").json()["budget_control"]["enabled"] is True
        for point in _points(pipeline):
            for split, scores in (("heldout", result.heldout), ("test", result.test)):
                assert scores is not None
                exits = decide_exits(scores.confidence, point.threshold_array())
                n = min(len(exits), 480)
                got = (
                    np.array(
                        [
                            r["exit"]
                            for r in classify(c, pipeline[split].pixels[:n], point.expected_mflops)
                        ]
                    )
                    - 1
                )
                assert (got == exits[:n]).mean() >= 0.99, (point.name, split)
                realised = float(costs[got].mean())
                assert realised == pytest.approx(float(costs[exits[:n]].mean()), rel=0.01)
        described = c.get("/v1/model").json()["operating_points"]
        assert not any(p["budget_control"]["controlled"] for p in described)


def test_onnx_and_torch_backends_answer_alike(pipeline: dict[str, Any]) -> None:
    pixels = pipeline["test"].pixels[:96]
    answers = {}
    for backend in ("torch", "onnx"):
        settings = Settings(  # type: ignore[call-arg]
            bundle=pipeline["bundle"].path, backend=backend, device="cpu", max_batch_size=16
        )
        with TestClient(create_app(settings)) as c:
            model = c.get("/v1/model").json()
            assert model["backend"] == backend
            answers[backend] = [
                [
                    (r["exit"], r["class_id"], r["confidence"])
                    for r in classify(c, pixels, p.expected_mflops)
                ]
                for p in _points(pipeline)
            ]
    for torch_point, onnx_point in zip(answers["torch"], answers["onnx"], strict=True):
        assert [(e, c) for e, c, _ in torch_point] == [(e, c) for e, c, _ in onnx_point]
        np.testing.assert_allclose(
            [x for _, _, x in torch_point], [x for _, _, x in onnx_point], rtol=0, atol=1e-5
        )
