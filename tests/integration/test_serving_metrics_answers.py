"""/metrics counts what clients got: the images of a request that ends in an error count as served
nowhere, even when the engine had answered some or all of them."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle

SERVED_SERIES = (
    "exitwise_exits_total{",
    "exitwise_stops_total{",
    "exitwise_mflops_per_image_count",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


def _served(client: TestClient) -> list[float]:
    """Per series of served images: its total over all labels."""
    lines = client.get("/metrics").text.splitlines()
    return [
        sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(series))
        for series in SERVED_SERIES
    ]


def test_a_tensor_whose_outputs_overflow_is_a_400_and_counts_no_image(served: Served) -> None:
    # The 400 came after the engine had answered (and counted) both images.
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        before = _served(client)
        tensor = {"name": "input", "datatype": "FP32", "shape": [2, 1, 32, 32]}
        body = {"inputs": [tensor | {"data": [3.0e38] * 2048}]}
        r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
        assert r.status_code == 400 and "not finite" in r.json()["error"], r.text
        assert _served(client) == before


def test_a_request_split_between_batches_whose_last_image_is_bad_counts_none(
    served: Served,
) -> None:
    # Decoded in the worker, two images to a batch: the first two were answered at exit 1 (and
    # counted) before the third failed to decode and the request got its 400.
    settings = Settings(bundle=served.path, decode_threads=0, max_batch_size=2)  # type: ignore[call-arg]
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        assert client.app.state.service.decode_in_worker  # type: ignore[attr-defined]
        before = _served(client)
        good = png(served.test.pixels[0])
        files = [("image", (f"{n}.png", good, "image/png")) for n in "ab"]
        files.append(("image", ("c.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")))
        r = client.post("/v1/classify?max_exit=1", files=files)
        assert r.status_code == 400 and "c.png" in r.json()["error"], r.text
        assert _served(client) == before
        r = client.post("/v1/classify?max_exit=1", files=files[:2])
        assert r.status_code == 200
        assert _served(client)[0] == before[0] + 2  # counted once answered
