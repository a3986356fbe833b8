"""Admission where the parameters meet: what a request is told when one parameter is wrong and
another would have it refused, a deadline equal to the timeout over either protocol, and the
deadline echoed as it was asked."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    settings = Settings(bundle=served.path)  # type: ignore[call-arg]
    with TestClient(create_app(settings, registry=CollectorRegistry())) as client:
        yield client


def _tensor() -> dict[str, object]:
    return {"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": [0.0] * 1024}


@pytest.mark.parametrize("deadline_ms", [200, 1072])  # both once refused over v2
def test_a_deadline_equal_to_the_timeout_is_taken_over_v1_and_v2(
    client: TestClient, served: Served, deadline_ms: int
) -> None:
    # v2's timeout is in microseconds; 200,000 us once came to 0.19999999999999998 s, under
    # deadline_ms=200's 0.2, and the 422 said the deadline was past a timeout equal to it.
    v1 = client.post(
        f"/v1/classify?deadline_ms={deadline_ms}&timeout_ms={deadline_ms}",
        content=png(served.test.pixels[0]),
        headers=PNG,
    )
    assert v1.status_code == 200, v1.text
    body = {
        "inputs": [_tensor()],
        "parameters": {"deadline_ms": deadline_ms, "timeout": deadline_ms * 1000},
    }
    v2 = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
    assert v2.status_code == 200, v2.text


def test_a_bad_parameter_is_a_422_even_where_the_deadline_would_be_refused(
    client: TestClient, served: Served
) -> None:
    # A busy device: exit 1 is forecast far past the deadline, so a strict request is refused
    # with a 503 and Retry-After. With a top_k the model cannot give, the client must hear of
    # its mistake (a 422), not be told to retry what can never succeed.
    service = client.app.state.service  # type: ignore[attr-defined]
    latency = service.engine.latency
    pace = latency.pace[0]
    latency.pace[0] = 1000.0
    try:
        image = png(served.test.pixels[0])
        strict = "/v1/classify?deadline_ms=50&deadline_policy=strict"
        refused = client.post(strict, content=image, headers=PNG)
        assert refused.status_code == 503 and "retry-after" in refused.headers
        bad = client.post(f"{strict}&top_k=99", content=image, headers=PNG)
        assert bad.status_code == 422, bad.text
        assert "top_k" in bad.json()["error"]
        assert "retry-after" not in bad.headers
    finally:
        latency.pace[0] = pace


def _images_answered(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("exitwise_exits_total{")
    )


def test_an_unknown_v2_output_is_a_400_before_any_work(client: TestClient) -> None:
    # The outputs were checked only when the answer was built: the image was classified (and
    # counted: exits, budget control) for nothing, and a strict request the forecast refuses
    # got a 503 with Retry-After for a mistake that retrying never mends.
    before = _images_answered(client)
    body = {"inputs": [_tensor()], "outputs": [{"name": "class_id"}, {"name": "logits"}]}
    r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
    assert r.status_code == 400, r.text
    assert "unknown output 'logits'" in r.json()["error"]
    assert _images_answered(client) == before, "the image was classified"
    service = client.app.state.service  # type: ignore[attr-defined]
    latency = service.engine.latency
    pace, latency.pace[0] = latency.pace[0], 1000.0  # a busy device: strict is refused
    try:
        body["parameters"] = {"deadline_ms": 50, "deadline_policy": "strict"}
        r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
        assert r.status_code == 400 and "retry-after" not in r.headers, r.text
    finally:
        latency.pace[0] = pace
    body["outputs"] = [{"name": "class_id"}, {"name": "exit", "parameters": {"binary_data": 0}}]
    r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["class_id", "exit"]


def test_the_answer_echoes_the_deadline_as_asked(client: TestClient, served: Served) -> None:
    for deadline_ms in (1001, 1003, 99.5):
        r = client.post(
            f"/v1/classify?deadline_ms={deadline_ms}&top_k=0",
            content=png(served.test.pixels[0]),
            headers=PNG,
        )
        assert r.status_code == 200, r.text
        assert r.json()["deadline_ms"] == deadline_ms
