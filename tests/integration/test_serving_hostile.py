"""A client's mistake or departure where it once got a 500 (and the log a traceback): a body
the client abandons mid-upload, hostile v2 JSON, shapes numpy cannot make, a tensor whose values
overflow the network, an image mode Pillow cannot convert, API keys no client could present."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry

from serving.app import create_app
from serving.settings import Settings
from tests.serving_helpers import Served, png, served_bundle


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


def make_settings(served: Served, **kw: Any) -> Settings:
    return Settings(bundle=served.path, max_body_bytes=64 * 1024, **kw)  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def client(served: Served) -> Iterator[TestClient]:
    app = create_app(make_settings(served), registry=CollectorRegistry())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _call(client: TestClient, app: Any, path: str, content_type: bytes) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    first = b"x" * 100
    if content_type.startswith(b"multipart/"):  # a well-formed start of a file part
        first = b'--b\r\nContent-Disposition: form-data; name="f"; filename="a.png"\r\n\r\n' + first
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": first, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
        "headers": [(b"content-type", content_type), (b"content-length", b"5000"),
                    (b"x-request-id", b"r-1")],
    }  # fmt: skip

    async def run() -> None:
        await app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(run)
    return sent


@pytest.mark.parametrize(
    "path,content_type,route",
    [
        ("/v1/classify", b"image/png", "/v1/classify"),
        ("/v1/classify", b"multipart/form-data; boundary=b", "/v1/classify"),
        ("/v2/models/tiny/infer", b"application/json", "/v2/models/{name}/infer"),
    ],
)
def test_a_client_gone_mid_upload_is_a_499_not_a_logged_500(
    served: Served, caplog: pytest.LogCaptureFixture, path: str, content_type: bytes, route: str
) -> None:
    app = create_app(make_settings(served), registry=CollectorRegistry())
    with TestClient(app, raise_server_exceptions=False) as client:
        with caplog.at_level(logging.ERROR, logger="exitwise.serving"):
            _call(client, app, path, content_type)
        metrics = client.get("/metrics").text
    counted = [
        line for line in metrics.splitlines()
        if line.startswith("exitwise_requests_total{") and f'route="{route}"' in line
    ]  # fmt: skip
    assert f'exitwise_requests_total{{code="499",route="{route}"}} 1.0' in counted, counted
    assert "unhandled error" not in caplog.text, caplog.text[-600:]


def _image_body(served: Served) -> str:
    return base64.b64encode(png(served.test.pixels[0])).decode()


@pytest.mark.parametrize(
    "case",
    ["int-over-4300-digits", "deeply-nested-json", "deeply-nested-data", "lone-surrogate-datatype"],
)
def test_hostile_v2_json_is_a_400_not_a_500(client: TestClient, served: Served, case: str) -> None:
    image = _image_body(served)
    if case == "int-over-4300-digits":  # json.loads raises a plain ValueError (CPython's limit)
        body = (
            '{"inputs":[{"name":"image","datatype":"BYTES","shape":[1' + "0" * 5000 + "],"
            f'"data":["{image}"]}}]}}'
        )
    elif case == "deeply-nested-json":  # RecursionError in json.loads
        body = "[" * 30000
    elif case == "deeply-nested-data":  # RecursionError in pydantic / _flatten
        body = (
            '{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":'
            + "[" * 900
            + "]" * 900
            + "}]}"
        )
    else:  # a JSON escape for a lone surrogate, echoed unescaped in the 400's message
        body = (
            f'{{"inputs":[{{"name":"image","datatype":"\\ud800","shape":[1],"data":["{image}"]}}]}}'
        )
    r = client.post(
        "/v2/models/tiny/infer", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, (r.status_code, r.text)
    assert "error" in r.json()


def test_a_finite_fp32_tensor_never_yields_invalid_json(client: TestClient) -> None:
    # Finite input (the NaN/inf check passes), but large enough that the logits overflow: the
    # answer carries a bare NaN, which RFC 8259 JSON (browsers, Go, serde, ...) cannot parse.
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 32, 32],
                    "data": [3e38] * 1024}],
        "parameters": {"max_exit": 4},
    }  # fmt: skip
    r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())

    def strict(token: str) -> float:
        raise ValueError(f"not JSON: {token}")

    if r.status_code == 200:
        json.loads(r.text, parse_constant=strict)  # raises on NaN/Infinity
    else:
        assert r.status_code == 400, r.text


@pytest.mark.parametrize("binary", [False, True])
def test_an_empty_tensor_with_a_huge_dimension_is_a_400(client: TestClient, binary: bool) -> None:
    # 0 elements, so the count check passes; numpy's reshape then raises ValueError
    # ("maximum supported dimension"), which nothing maps: a 500.
    tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [0, 1, 32, 2**70]}
    if binary:
        tensor["parameters"] = {"binary_data_size": 0}
    else:
        tensor["data"] = []
    head = json.dumps({"inputs": [tensor]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if binary else {}
    r = client.post("/v2/models/tiny/infer", content=head, headers=headers)
    assert r.status_code == 400, (r.status_code, r.text)


def _lab_tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("LAB", (28, 28)).save(buf, format="TIFF")
    return buf.getvalue()


def test_a_lab_tiff_is_a_400_on_v1(client: TestClient) -> None:
    r = client.post("/v1/classify", content=_lab_tiff(), headers={"content-type": "image/tiff"})
    assert r.status_code == 400, (r.status_code, r.text)


def test_a_lab_tiff_is_a_400_on_v2(client: TestClient) -> None:
    image = base64.b64encode(_lab_tiff()).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    r = client.post("/v2/models/tiny/infer", content=json.dumps(body).encode())
    assert r.status_code == 400, (r.status_code, r.text)


@pytest.mark.parametrize(
    "configured,presented",
    [
        # A key read from a secret file keeps its trailing newline; HTTP header values cannot
        # carry one (and the server strips the Bearer token it reads).
        ("s3cret\n", b"Bearer s3cret"),
        # A non-ASCII key sent as UTF-8: Starlette decodes header bytes as latin-1, and
        # authorize() re-encodes that str as UTF-8 before comparing.
        ("p\u00e4ss", "Bearer p\u00e4ss".encode()),
    ],
)
def test_a_configured_key_can_be_presented(
    served: Served, configured: str, presented: bytes
) -> None:
    app = create_app(make_settings(served, api_key=configured), registry=CollectorRegistry())
    with TestClient(app) as c:
        r = c.post(
            "/v1/classify",
            content=png(served.test.pixels[0]),
            headers={"content-type": "image/png", "authorization": presented},
        )
    assert r.status_code == 200, (r.status_code, r.text)
