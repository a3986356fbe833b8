"""Every error status through the app (TestClient), limits, API keys, readiness, bundles without a
calibration; after each error the server still answers correctly."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from exitwise.bundle import CALIBRATION_FILE, load_bundle
from exitwise.errors import CalibrationMismatchError, ExitwiseError
from exitwise.models import State
from serving.app import create_app
from serving.loading import load_model
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


def _settings(served: Served, **kw: Any) -> Settings:
    limits: dict[str, Any] = dict(
        max_body_bytes=64 * 1024,
        max_images_per_request=4,
        max_queue_images=8,
        max_image_pixels=100 * 100,
    )
    return Settings(bundle=served.path, **{**limits, **kw})


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(served)), raise_server_exceptions=False) as c:
        yield c


def _good(client: TestClient, served: Served, **headers: str) -> None:
    """A correct answer: the same exit and class as a fresh request at exit 4 (not degraded: a
    test that filled the queue leaves the degradation level held for a while)."""
    r = client.post(
        "/v1/classify?max_exit=4&degrade=false",
        content=png(served.test.pixels[0]),
        headers={**PNG, **headers},
    )
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["exit"] == 4


def _big_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def _v2(client: TestClient, body: dict[str, Any], model: str = "tiny") -> Any:
    return client.post(f"/v2/models/{model}/infer", content=json.dumps(body).encode())


def _fp32(n: int, shape: tuple[int, ...] = (1, 32, 32), value: float = 0.0) -> dict[str, Any]:
    data = [value] * (n * int(np.prod(shape)))
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, *shape], "data": data}]}


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("not-an-image", 400, "cannot decode"),
        ("empty-body", 400, "empty image"),
        ("no-image", 400, "no image"),
        ("v2-bad-json", 400, "not valid JSON"),
        ("v2-bad-shape", 400, "shape"),
        ("v2-nan", 400, "NaN"),
        ("v2-short-binary", 400, "shorter"),
        ("v2-unknown-input", 400, "unknown input"),
        ("unknown-route", 404, "Not Found"),
        ("v2-unknown-model", 404, "unknown model"),
        ("body-too-large", 413, "limit"),
        ("too-many-images", 413, "limit is 4"),
        ("too-many-pixels", 413, "pixels"),
        ("v2-too-many-images", 413, "limit is 4"),
        ("text-plain", 415, "unsupported content type"),
        ("no-content-type", 415, "(none)"),
        ("budget-below", 422, "valid budgets are >="),
        ("max-exit-range", 422, "between 1 and 4"),
        ("unknown-param", 422, "unknown query parameter"),
        ("bad-number", 422, "must be a number"),
        ("top-k-range", 422, "top_k"),
        ("v2-bad-budget", 422, "budget_mflops"),
        ("timeout", 504, "timeout passed"),
        ("v2-timeout", 504, "timeout passed"),
    ],
)
def test_error_statuses(
    client: TestClient, served: Served, case: str, status: int, needle: str
) -> None:
    image = png(served.test.pixels[0])
    post = client.post
    if case == "not-an-image":
        r = post("/v1/classify", content=b"GIF89a nonsense", headers=PNG)
    elif case == "empty-body":
        r = post("/v1/classify", content=b"", headers=PNG)
    elif case == "no-image":
        body = b'--b\r\nContent-Disposition: form-data; name="max_exit"\r\n\r\n2\r\n--b--\r\n'
        r = post(
            "/v1/classify",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
    elif case == "v2-bad-json":
        r = post("/v2/models/tiny/infer", content=b"{nope")
    elif case == "v2-bad-shape":
        r = _v2(client, _fp32(1, (3, 32, 32)))
    elif case == "v2-nan":
        r = _v2(client, _fp32(1, value=float("nan")))  # json.dumps writes NaN; Python reads it
    elif case == "v2-short-binary":
        head = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32],
                         "parameters": {"binary_data_size": 4096}}]}
        ).encode()  # fmt: skip
        r = post(
            "/v2/models/tiny/infer",
            content=head + b"\0" * 100,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
    elif case == "v2-unknown-input":
        body = _fp32(1)
        body["inputs"][0]["name"] = "pixels"
        r = _v2(client, body)
    elif case == "unknown-route":
        r = client.get("/v1/nothing")
    elif case == "v2-unknown-model":
        r = _v2(client, _fp32(1), model="other")
    elif case == "body-too-large":
        r = post("/v1/classify", content=b"\0" * (65 * 1024), headers=PNG)
    elif case == "too-many-images":
        r = post("/v1/classify", files=[("f", (f"{i}.png", image, "image/png")) for i in range(5)])
    elif case == "too-many-pixels":
        r = post("/v1/classify", content=_big_png(101), headers=PNG)
    elif case == "v2-too-many-images":
        r = _v2(client, _fp32(5))
    elif case == "text-plain":
        r = post("/v1/classify", content=image, headers={"content-type": "text/plain"})
    elif case == "no-content-type":
        r = post("/v1/classify", content=image)
    elif case == "budget-below":
        r = post("/v1/classify?budget_mflops=0.01", content=image, headers=PNG)
    elif case == "max-exit-range":
        r = post("/v1/classify?max_exit=9", content=image, headers=PNG)
    elif case == "unknown-param":
        r = post("/v1/classify?budget=3", content=image, headers=PNG)
    elif case == "bad-number":
        r = post("/v1/classify?budget_mflops=lots", content=image, headers=PNG)
    elif case == "top-k-range":
        r = post("/v1/classify?top_k=11", content=image, headers=PNG)
    elif case == "v2-bad-budget":
        r = _v2(client, {**_fp32(1), "parameters": {"budget_mflops": "lots"}})
    elif case == "timeout":
        r = post("/v1/classify?timeout_ms=0.000001", content=image, headers=PNG)
    elif case == "v2-timeout":
        r = _v2(client, {**_fp32(1), "parameters": {"timeout": 0.001}})
    else:  # pragma: no cover
        raise AssertionError(case)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert needle in r.json()["error"], r.json()
    _good(client, served)


class _SlowRunner:
    """Wraps a runner: each stage sleeps first (to hold the queue), or raises."""

    def __init__(self, inner: Any, delay: float = 0.0, fail: bool = False) -> None:
        self.inner, self.delay, self.fail = inner, delay, fail
        self.backend, self.device, self.provider = inner.backend, inner.device, inner.provider
        self.num_exits = inner.num_exits

    def initial_state(self, images: torch.Tensor) -> State:
        return self.inner.initial_state(images)  # type: ignore[no-any-return]

    def run_stage(self, index: int, state: State) -> tuple[State, torch.Tensor]:
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the device is on fire")
        return self.inner.run_stage(index, state)  # type: ignore[no-any-return]


def test_queue_full_is_503_with_retry_after(served: Served) -> None:
    app = create_app(_settings(served, max_batch_size=1))
    with TestClient(app) as c:
        engine = app.state.service.engine
        engine.runner = _SlowRunner(engine.runner, delay=0.05)
        files = [("f", (f"{i}.png", png(served.test.pixels[i]), "image/png")) for i in range(4)]
        answers: list[int] = []

        def send() -> None:
            answers.append(c.post("/v1/classify?max_exit=4", files=files).status_code)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:  # 4 + 4 images fill the 8-image queue (the worker holds 1 at a time)
            t.start()
        deadline = time.monotonic() + 10
        while engine.queued_images < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        r = c.post("/v1/classify?max_exit=4", files=files)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
        for t in threads:
            t.join(30)
        assert answers == [200, 200]
        engine.runner = engine.runner.inner
        _good(c, served)


def test_a_full_queue_refuses_before_the_body_is_read(served: Served) -> None:
    # Under overload a refusal should cost the event loop as little as it can: with no room
    # for even one image, v1 and v2 answer 503 before reading (let alone decoding) the body, so
    # a body that is no image gets the 503, not the 400 it would get with room.
    app = create_app(_settings(served, max_batch_size=1, max_queue_images=4))
    with TestClient(app) as c:
        engine = app.state.service.engine
        engine.runner = _SlowRunner(engine.runner, delay=0.05)
        files = [("f", (f"{i}.png", png(served.test.pixels[i]), "image/png")) for i in range(4)]
        answers: list[int] = []

        def send(count: int) -> None:
            r = c.post("/v1/classify?max_exit=4&degrade=false", files=files[:count])
            answers.append(r.status_code)

        threads = [threading.Thread(target=send, args=(n,)) for n in (4, 1)]
        for t in threads:  # 4 + 1 images, the worker holding one: the 4-image queue is full
            t.start()
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while engine.queued_images < 4 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert engine.queued_images == 4
        v1 = c.post("/v1/classify", content=b"not an image", headers=PNG)
        v2 = c.post("/v2/models/tiny/infer", content=b"{not json")
        for r in (v1, v2):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]
        for t in threads:
            t.join(30)
        assert sorted(answers) == [200, 200]
        metrics = c.get("/metrics").text
        assert 'exitwise_refused_total{reason="queue_full"} 2.0' in metrics
        assert 'exitwise_refused_total{reason="deadline_shed"} 0.0' in metrics
        engine.runner = engine.runner.inner
        # With room again, the same bodies are the client's mistakes.
        assert c.post("/v1/classify", content=b"not an image", headers=PNG).status_code == 400
        assert c.post("/v2/models/tiny/infer", content=b"{not json").status_code == 400


def test_unexpected_errors_are_a_generic_500(
    client: TestClient, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    engine.runner = _SlowRunner(engine.runner, fail=True)
    try:
        r = client.post("/v1/classify", content=png(served.test.pixels[0]), headers=PNG)
    finally:
        engine.runner = engine.runner.inner
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}
    assert "fire" not in r.text
    assert "RuntimeError: the device is on fire" in caplog.text  # the traceback went to the log
    _good(client, served)


def test_api_key(served: Served) -> None:
    settings = _settings(served, api_key="s3cret")
    with TestClient(create_app(settings)) as c:
        image = png(served.test.pixels[0])
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}):
            r = c.post("/v1/classify", content=image, headers={**PNG, **headers})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "API key" in r.json()["error"]
        assert c.get("/v1/model").status_code == 401
        assert c.get("/v2/models/tiny").status_code == 401
        assert c.post("/v2/models/tiny/infer", json=_fp32(1)).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/v2"):
            assert c.get(open_path).status_code == 200, open_path
        _good(c, served, Authorization="Bearer s3cret")
        _good(c, served, **{"X-API-Key": "s3cret"})
    locked = _settings(served, api_key="s3cret", metrics_require_key=True)
    with TestClient(create_app(locked)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_not_ready_before_start_and_draining(served: Served) -> None:
    app = create_app(_settings(served))
    c = TestClient(app)  # no lifespan: the model is not loaded
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and "starting" in r.json()["error"]
    r = c.post("/v1/classify", content=png(served.test.pixels[0]), headers=PNG)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert c.get("/v2/models/tiny/ready").status_code == 503
    assert c.get("/v1/model").status_code == 503
    # Refused requests are inference requests: probes and metadata reads answered 503 while
    # starting or draining are no refused work (they counted as such).
    refused = 'exitwise_refused_total{reason="not_ready"} 1.0'
    assert refused in c.get("/metrics").text
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        app.state.lifecycle.begin_drain()
        assert c.get("/readyz").status_code == 503
        assert c.get("/v2/health/ready").status_code == 503
        _good(c, served)  # requests already routed here are still served while draining


def test_uncalibrated_bundle_serves_the_last_exit(served: Served, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(served.path, copy)
    (copy / CALIBRATION_FILE).unlink()
    with TestClient(create_app(Settings(bundle=copy))) as c:
        assert c.get("/v1/model").json()["calibrated"] is False
        body = c.post("/v1/classify", content=png(served.test.pixels[0]), headers=PNG).json()
        assert body["operating_point"]["source"] == "last-exit"
        assert body["results"][0]["exit"] == 4
        r = c.post("/v1/classify?budget_mflops=5", content=png(served.test.pixels[0]), headers=PNG)
        assert r.status_code == 422 and "not calibrated" in r.json()["error"]
        r = c.post("/v1/classify?max_exit=2", content=png(served.test.pixels[0]), headers=PNG)
        assert r.json()["results"][0]["exit"] == 2


def test_a_calibration_for_other_weights_is_refused(served: Served, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(served.path, copy)
    cal = json.loads((copy / CALIBRATION_FILE).read_text())
    cal["weights_sha256"] = "0" * 64
    (copy / CALIBRATION_FILE).write_text(json.dumps(cal))
    with pytest.raises(CalibrationMismatchError):
        load_model(Settings(bundle=copy))
    with pytest.raises(ExitwiseError, match="onnx backend"):
        load_model(Settings(bundle=served.path, backend="onnx"))
    assert load_bundle(served.path).has_calibration
