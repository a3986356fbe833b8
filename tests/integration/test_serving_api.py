"""REST v1 and v2 through the app (TestClient): fidelity to calibration, early exit, metrics."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from exitwise.bundle import OperatingPoint
from exitwise.preprocess import normalize
from serving.app import create_app
from serving.settings import Settings
from tests.serving_helpers import (
    Served,
    Split,
    all_confidences,
    assert_documented_metrics_exported,
    png,
    served_bundle,
    simulate,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    # Budget control and degradation off: these tests compare served exits with calibration's
    # thresholds, 16 clients at once included (a queue on a slow machine, not an overload).
    settings = Settings(
        bundle=served.path,
        max_images_per_request=100,
        max_batch_size=32,
        budget_control="off",
        degrade=False,
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def points(served: Served) -> list[OperatingPoint]:
    return sorted(served.bundle.calibration().operating_points, key=lambda p: p.expected_mflops)


@pytest.fixture(scope="module")
def reference(served: Served) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Confidences and predictions from one full forward pass, per split."""
    return {
        "heldout": all_confidences(served.bundle, served.heldout.pixels),
        "test": all_confidences(served.bundle, served.test.pixels),
    }


def classify(
    client: TestClient, pixels: np.ndarray, chunk: int = 100, **params: Any
) -> list[dict[str, Any]]:
    """Every image through POST /v1/classify (multipart), in requests of ``chunk`` images."""
    results: list[dict[str, Any]] = []
    for start in range(0, len(pixels), chunk):
        files = [
            ("file", (f"{start + i}.png", png(p), "image/png"))
            for i, p in enumerate(pixels[start : start + chunk])
        ]
        r = client.post("/v1/classify", params=params, files=files)
        assert r.status_code == 200, r.text
        results.extend(r.json()["results"])
    return results


def test_model_description(
    client: TestClient, served: Served, points: list[OperatingPoint]
) -> None:
    body = client.get("/v1/model").json()
    assert body["name"] == "tiny" and body["arch"] == "msdnet" and body["calibrated"]
    assert [e["mflops"] for e in body["exits"]] == served.bundle.manifest.exit_mflops
    assert "heldout_accuracy" in body["exits"][0]
    assert [p["name"] for p in body["operating_points"]] == [p.name for p in points]
    assert body["operating_points"][0]["test"]["accuracy"] == points[0].test.accuracy  # type: ignore[union-attr]
    assert body["budget_mflops_range"] == [points[0].expected_mflops, points[-1].expected_mflops]
    assert (body["backend"], body["device"], body["provider"]) == (
        "torch",
        "cpu",
        "torch-cpu-script",
    )
    assert body["default_plan"]["operating_point"] == "q1"


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("split", ["heldout", "test"])
def test_served_exits_equal_calibrations_simulation(
    client: TestClient,
    served: Served,
    points: list[OperatingPoint],
    reference: dict[str, tuple[np.ndarray, np.ndarray]],
    which: int,
    split: str,
) -> None:
    point = points[which]
    data: Split = getattr(served, split)
    conf, pred = reference[split]
    exits, chosen = simulate(conf, pred, point.threshold_array())
    got = classify(client, data.pixels, budget_mflops=point.expected_mflops)
    np.testing.assert_array_equal([r["exit"] for r in got], exits + 1)
    np.testing.assert_array_equal([r["class_id"] for r in got], chosen)
    np.testing.assert_allclose(
        [r["confidence"] for r in got], conf[np.arange(len(exits)), exits], rtol=1e-6
    )
    realised = float(np.mean([r["mflops"] for r in got]))
    expected = point.test.mflops if split == "test" else point.expected_mflops  # type: ignore[union-attr]
    assert realised == pytest.approx(expected, rel=0.03)
    costs = np.array(served.bundle.manifest.exit_mflops)
    assert realised == pytest.approx(float(np.mean(costs[exits])))


def test_anytime_and_capped_budgets(
    client: TestClient,
    served: Served,
    points: list[OperatingPoint],
    reference: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    conf, pred = reference["test"]
    pixels = served.test.pixels[:60]
    for max_exit in (1, 4):
        got = classify(client, pixels, max_exit=max_exit)
        assert {r["exit"] for r in got} == {max_exit}
        np.testing.assert_array_equal([r["class_id"] for r in got], pred[:60, max_exit - 1])
    top = points[-1]
    exits, chosen = simulate(conf[:60], pred[:60], top.threshold_array(), max_index=1)
    r = client.post(
        "/v1/classify",
        params={"budget_mflops": top.expected_mflops, "max_exit": 2, "top_k": 3},
        files=[("f", ("x.png", png(p), "image/png")) for p in pixels],
    )
    body = r.json()
    assert body["operating_point"]["name"] == f"{top.name}+max-exit-2"
    assert [x["exit"] for x in body["results"]] == (exits + 1).tolist()
    assert [x["class_id"] for x in body["results"]] == chosen.tolist()
    first = body["results"][0]
    assert len(first["top_k"]) == 3 and first["top_k"][0]["class_id"] == first["class_id"]
    assert first["top_k"][0]["probability"] == pytest.approx(first["confidence"])


def test_raw_body_and_defaults(client: TestClient, served: Served) -> None:
    image = png(served.test.pixels[0])
    r = client.post("/v1/classify", content=image, headers={"content-type": "image/png"})
    assert r.status_code == 200
    body = r.json()
    assert body["operating_point"]["source"] == "calibration-default"
    assert body["operating_point"]["operating_point"] == "q1"
    assert len(body["results"][0]["top_k"]) == 5 and "filename" not in body["results"][0]
    timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert set(timing) == {"app", "decode", "queue", "compute"}
    assert float(timing["app"]) >= float(timing["compute"]) > 0
    form = client.post(
        "/v1/classify",
        data={"max_exit": "3", "top_k": "0"},
        files={"image": ("a.png", image, "image/png")},
    ).json()
    assert form["results"][0]["exit"] == 3 and form["results"][0]["top_k"] == []
    assert form["results"][0]["filename"] == "a.png"


def test_later_stages_see_fewer_rows(served: Served, points: list[OperatingPoint]) -> None:
    registry = CollectorRegistry()
    settings = Settings(bundle=served.path, max_images_per_request=100)
    conf, pred = all_confidences(served.bundle, served.test.pixels[:100])
    exits, _ = simulate(conf, pred, points[0].threshold_array())
    with TestClient(create_app(settings, registry=registry)) as c:
        classify(c, served.test.pixels[:100], budget_mflops=points[0].expected_mflops)
    rows = [
        registry.get_sample_value("exitwise_stage_batch_size_sum", {"stage": str(k)}) or 0.0
        for k in range(1, 5)
    ]
    assert rows == [float((exits >= k).sum()) for k in range(4)]
    assert rows[0] == 100 and rows[3] < rows[1] < rows[0]
    get = registry.get_sample_value
    counts = [get("exitwise_exits_total", {"exit": str(k)}) for k in range(1, 5)]
    assert counts == [float((exits == k).sum()) for k in range(4)]


def test_metrics_exposes_every_documented_series(client: TestClient) -> None:
    client.post(
        "/v1/classify?max_exit=1", content=b"not an image", headers={"content-type": "image/png"}
    )
    text = client.get("/metrics").text
    for name in (
        "exitwise_requests_total",
        "exitwise_request_duration_seconds_bucket",
        "exitwise_queue_wait_seconds_bucket",
        "exitwise_compute_seconds_bucket",
        "exitwise_batch_size_bucket",
        "exitwise_stage_batch_size_bucket",
        "exitwise_exits_total",
        "exitwise_mflops_per_image_bucket",
        "exitwise_inflight_requests",
        "exitwise_queue_depth",
        "exitwise_model_info",
        'exitwise_gc_pause_seconds_bucket{generation="2"',
        'exitwise_refused_total{reason="queue_full"}',
    ):
        assert name in text, name
    assert 'exitwise_requests_total{code="400",route="/v1/classify"}' in text
    assert 'le="0.0005"' in text  # buckets start below 1 ms
    info = (
        'exitwise_model_info{backend="torch",device="cpu",model="tiny",provider="torch-cpu-script"}'
    )
    assert f"{info} 1.0" in text


def test_metrics_has_every_series_the_docs_list(client: TestClient, served: Served) -> None:
    """Each metric in docs/serving.md's table has samples once one image was classified
    (labelled series are created at 0 up front, so dashboards and alerts find them)."""
    r = client.post(
        "/v1/classify", content=png(served.test.pixels[0]), headers={"content-type": "image/png"}
    )
    assert r.status_code == 200, r.text
    assert_documented_metrics_exported(client.get("/metrics").text)


def test_many_clients_at_once(client: TestClient, served: Served, reference: dict) -> None:
    conf, pred = reference["test"]
    point = served.bundle.calibration().point("q1")
    exits, chosen = simulate(conf, pred, point.threshold_array())

    def one(i: int) -> tuple[int, dict[str, Any]]:
        idx = i % len(served.test.pixels)
        r = client.post(
            "/v1/classify",
            content=png(served.test.pixels[idx]),
            headers={"content-type": "image/png"},
            params={"budget_mflops": point.expected_mflops, "top_k": 0},
        )
        assert r.status_code == 200, r.text
        return idx, r.json()["results"][0]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(96)))
    for idx, result in answers:
        assert (result["exit"], result["class_id"]) == (exits[idx] + 1, chosen[idx])


# --- Open Inference Protocol v2 (JSON forms; tritonclient's binary form is tested end to end) ---


def test_v2_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32]}
    assert [o["name"] for o in meta["outputs"]] == [
        "class_id",
        "class_name",
        "confidence",
        "exit",
        "mflops",
        "stop_reason",
    ]
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v2/models/tiny/versions/2").status_code == 404


def test_v2_tensor_and_base64_inputs_agree_with_v1(
    client: TestClient, served: Served, points: list[OperatingPoint]
) -> None:
    pixels = served.test.pixels[:8]
    budget = points[1].expected_mflops
    v1 = classify(client, pixels, budget_mflops=budget)
    x = normalize(torch.from_numpy(pixels), served.bundle.manifest.preprocessing).numpy()
    tensor_req = {
        "id": "r1",
        "parameters": {"budget_mflops": budget},
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
    }
    bytes_req = {
        "parameters": {"budget_mflops": budget},
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [8],
                "data": [base64.b64encode(png(p)).decode() for p in pixels],
            }
        ],
        "outputs": [{"name": "exit"}, {"name": "class_name"}],
    }
    a = client.post("/v2/models/tiny/infer", json=tensor_req).json()
    assert a["id"] == "r1" and a["model_name"] == "tiny"
    assert a["parameters"]["operating_point"] == points[1].name
    out = {o["name"]: o["data"] for o in a["outputs"]}
    assert out["exit"] == [r["exit"] for r in v1]
    assert out["class_id"] == [r["class_id"] for r in v1]
    assert out["mflops"] == [r["mflops"] for r in v1]
    b = client.post("/v2/models/tiny/versions/1/infer", json=bytes_req).json()
    assert [o["name"] for o in b["outputs"]] == ["exit", "class_name"]
    assert b["outputs"][0]["data"] == out["exit"]
    assert b["outputs"][1]["data"] == [r["class_name"] for r in v1]


def test_v2_binary_extension_both_ways(client: TestClient, served: Served) -> None:
    pixels = served.test.pixels[:3]
    blob = b"".join(struct.pack("<I", len(b)) + b for b in (png(p) for p in pixels))
    head = json.dumps(
        {
            "parameters": {"max_exit": 2, "binary_data_output": True},
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [3, 1],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
        }
    ).encode()
    r = client.post(
        "/v2/models/tiny/infer",
        content=head + blob,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
    names = [o["name"] for o in meta["outputs"]]
    offset = n + sum(sizes[: names.index("exit")])
    exits = np.frombuffer(r.content[offset : offset + sizes[names.index("exit")]], dtype="<i8")
    assert exits.tolist() == [2, 2, 2]
