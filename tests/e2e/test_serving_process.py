"""``exitwise serve`` as a real uvicorn process on 127.0.0.1: errors over the wire, the stock
tritonclient, many clients, queue overflow, SIGTERM with requests in flight, the load client."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from exitwise.preprocess import normalize
from tests.serving_helpers import (
    REPO,
    Served,
    ServerProcess,
    all_confidences,
    png,
    running_server,
    served_bundle,
    simulate,
    stop_server,
)

KEY = "e2e-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = {"content-type": "image/png", **AUTH}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with an API key and small limits."""
    env = {
        "EXITWISE_API_KEY": KEY,
        "EXITWISE_MAX_BODY_BYTES": str(256 * 1024),
        "EXITWISE_MAX_IMAGES_PER_REQUEST": "16",
        "EXITWISE_MAX_IMAGE_PIXELS": "10000",
        "EXITWISE_TORCH_THREADS": "1",
        # These tests compare served exits with calibration's: no moving thresholds (budget
        # control) and no stepping down under a queue that a busy machine could build.
        "EXITWISE_BUDGET_CONTROL": "off",
        "EXITWISE_DEGRADE": "false",
    }
    log = tmp_path_factory.mktemp("server-a") / "server.log"
    args = ("--max-batch-size", "16", "--drain-seconds", "0.2")
    yield from running_server(served.path, log, *args, env=env)


@pytest.fixture(scope="module")
def expected(served: Served) -> tuple[np.ndarray, np.ndarray]:
    """Exits and classes calibration's simulation gives on the test split at point q1."""
    conf, pred = all_confidences(served.bundle, served.test.pixels)
    return simulate(conf, pred, served.bundle.calibration().point("q1").threshold_array())


def _budget(served: Served) -> float:
    return served.bundle.calibration().point("q1").expected_mflops


def _check_answers_correctly(url: str, served: Served, expected: Any, i: int = 3) -> None:
    r = httpx.post(
        f"{url}/v1/classify",
        content=png(served.test.pixels[i]),
        params={"budget_mflops": _budget(served)},
        headers=PNG,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    got = r.json()["results"][0]
    assert (got["exit"], got["class_id"]) == (expected[0][i] + 1, expected[1][i])


def test_error_statuses_over_the_wire(server: ServerProcess, served: Served, expected: Any) -> None:
    url, image = server.url, png(served.test.pixels[0])
    big = np.zeros((101, 101), dtype=np.uint8)
    cases: list[tuple[int, dict[str, Any]]] = [
        (400, {"content": b"not an image", "headers": PNG}),
        (401, {"content": image, "headers": {"content-type": "image/png"}}),
        (401, {"content": image, "headers": {"content-type": "image/png", "X-API-Key": "no"}}),
        (413, {"content": b"\0" * (300 * 1024), "headers": PNG}),
        (413, {"files": [("f", (f"{i}.png", image, "image/png")) for i in range(17)],
               "headers": AUTH}),
        (413, {"content": png(big[None]), "headers": PNG}),
        (415, {"content": image, "headers": {"content-type": "text/plain", **AUTH}}),
        (422, {"content": image, "headers": PNG, "params": {"budget_mflops": 0.001}}),
        (422, {"content": image, "headers": PNG, "params": {"max_exit": 0}}),
        (504, {"content": image, "headers": PNG, "params": {"timeout_ms": 0.000001}}),
    ]  # fmt: skip
    with httpx.Client(base_url=url, timeout=30) as client:
        for status, kwargs in cases:
            r = client.post("/v1/classify", **kwargs)
            assert r.status_code == status, (status, r.text)
            assert set(r.json()) == {"error"}
            _check_answers_correctly(url, served, expected)
        assert client.get("/nothing/here").status_code == 404
        r = client.post("/v2/models/other/infer", json={"inputs": []}, headers=AUTH)
        assert r.status_code == 404 and "unknown model" in r.json()["error"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    _check_answers_correctly(url, served, expected)


def test_tritonclient_round_trip(server: ServerProcess, served: Served, expected: Any) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("tiny")
        meta = client.get_model_metadata("tiny", headers=AUTH)
        assert meta["inputs"][0]["name"] == "input"
        assert client.get_server_metadata()["name"] == "exitwise"
        n = 12
        blobs = np.array([png(p) for p in served.test.pixels[:n]], dtype=np.object_)
        image_in = triton.InferInput("image", [n], "BYTES")
        image_in.set_data_from_numpy(blobs)  # binary tensor extension
        budget = {"budget_mflops": _budget(served)}
        result = client.infer("tiny", [image_in], parameters=budget, headers=AUTH)
        np.testing.assert_array_equal(result.as_numpy("exit"), expected[0][:n] + 1)
        np.testing.assert_array_equal(result.as_numpy("class_id"), expected[1][:n])
        names = [served.bundle.manifest.class_names[c] for c in expected[1][:n]]
        assert [b.decode() for b in result.as_numpy("class_name")] == names
        assert result.get_response()["parameters"]["operating_point"] == "q1"

        x = normalize(
            torch.from_numpy(served.test.pixels[:n]), served.bundle.manifest.preprocessing
        )
        tensor_in = triton.InferInput("input", list(x.shape), "FP32")
        tensor_in.set_data_from_numpy(x.numpy())
        outputs = [
            triton.InferRequestedOutput("exit", binary_data=False),
            triton.InferRequestedOutput("confidence"),
        ]
        result = client.infer("tiny", [tensor_in], outputs=outputs, parameters=budget, headers=AUTH)
        np.testing.assert_array_equal(result.as_numpy("exit"), expected[0][:n] + 1)
        assert result.as_numpy("confidence").dtype == np.float64
        assert result.as_numpy("class_id") is None  # not requested

        with pytest.raises(triton.InferenceServerException, match="API key"):
            client.infer("tiny", [tensor_in])
    finally:
        client.close()


def test_many_clients_at_once(server: ServerProcess, served: Served, expected: Any) -> None:
    n_requests = 96

    async def main() -> list[tuple[int, int, dict[str, Any]]]:
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

            async def one(i: int) -> tuple[int, int, dict[str, Any]]:
                idx = i % len(served.test.pixels)
                async with sem:
                    r = await client.post(
                        "/v1/classify",
                        content=png(served.test.pixels[idx]),
                        params={"budget_mflops": _budget(served), "top_k": 0},
                        headers=PNG,
                    )
                return idx, r.status_code, r.json()

            return await asyncio.gather(*(one(i) for i in range(n_requests)))

    for idx, status, body in asyncio.run(main()):
        assert status == 200, body
        got = body["results"][0]
        assert (got["exit"], got["class_id"]) == (expected[0][idx] + 1, expected[1][idx])


def test_bench_http_against_the_server(
    server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "cli", "bench", "http", "--url", server.url,
        "--concurrency", "1,4", "--requests", "12", "--duration", "20", "--num-images", "20",
        "--data-root", str(served.data_root), "--budgets", f"{_budget(served)},exit2",
        "--json", str(out),
    ]  # fmt: skip
    env = {"PYTHONPATH": str(REPO), "EXITWISE_API_KEY": KEY, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["workload"].split(" ")[0] for r in rows] == ["last", "q1", "exit"] * 2
    assert [r["concurrency"] for r in rows] == [1, 1, 1, 4, 4, 4]
    for r in rows:
        assert r["ok"] == 12 and sum(r["exit_histogram"].values()) == 12
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert rows[0]["exit_histogram"] == {"4": 12} and rows[2]["exit_histogram"] == {"2": 12}
    assert rows[0]["speedup"] == 1.0 and rows[1]["mflops_ratio"] > 1.0
    assert "| workload |" in done.stdout


# --- a second server: a tiny queue, a drain period, then SIGTERM --------------------------------


@pytest.fixture(scope="module")
def small(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"EXITWISE_MAX_IMAGES_PER_REQUEST": "8", "EXITWISE_TORCH_THREADS": "1"}
    log = tmp_path_factory.mktemp("server-b") / "server.log"
    args = ("--max-batch-size", "2", "--max-queue-images", "8", "--drain-seconds", "1.5")
    yield from running_server(served.path, log, *args, env=env)


def test_queue_overflow_is_503_not_a_hang(small: ServerProcess, served: Served) -> None:
    # Requests that do not allow degradation get their whole plan or a 503. Those that allow
    # it (the default) may also find room made for them: images of earlier ones, waiting for a
    # deeper stage, answered from the exit they passed (stopped: overload), never any other.
    files = [("f", (f"{i}.png", png(served.test.pixels[i]), "image/png")) for i in range(8)]

    async def main(query: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post(f"/v1/classify?{query}", files=files) for _ in range(40))
            )

    answers = asyncio.run(main("max_exit=4&degrade=false"))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]
    for ok in (r for r in answers if r.status_code == 200):
        assert [x["exit"] for x in ok.json()["results"]] == [4] * 8
    stops: list[str] = []
    # Room is made when a burst finds earlier requests' rows past exit 1; a burst read whole
    # before the first batch ran (a slow machine) would find none, so up to three bursts.
    for _ in range(3):
        degradable = asyncio.run(main("max_exit=4&top_k=2"))
        assert {r.status_code for r in degradable} <= {200, 503}
        for ok in (r for r in degradable if r.status_code == 200):
            cheaper = ok.json()["operating_point"]["degraded_from"] is not None
            for x in ok.json()["results"]:
                stops.append(x["stopped"])
                assert (
                    (x["exit"], x["stopped"]) == (4, "cap")
                    or (x["exit"] < 4 and len(x["top_k"]) == 2 and x["stopped"] == "overload")
                    or (cheaper and x["stopped"] == "confident")
                ), x
        if "overload" in stops:
            break
    assert "overload" in stops
    r = httpx.post(f"{small.url}/v1/classify?max_exit=2", files=files, timeout=30)
    assert r.status_code == 200


def test_sigterm_lets_requests_in_flight_finish(small: ServerProcess, served: Served) -> None:
    image = png(served.test.pixels[5])
    results: list[httpx.Response | Exception] = []

    def slow_body() -> Iterator[bytes]:  # the upload takes ~2.5 s, well past the SIGTERM
        for i in range(0, len(image), len(image) // 5 + 1):
            time.sleep(0.5)
            yield image[i : i + len(image) // 5 + 1]

    def slow_request() -> None:
        try:
            results.append(
                httpx.post(
                    f"{small.url}/v1/classify?max_exit=3",
                    content=slow_body(),
                    headers={"content-type": "image/png"},
                    timeout=60,
                )
            )
        except Exception as err:  # recorded, so the assertion below shows it
            results.append(err)

    threads = [threading.Thread(target=slow_request) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.6)  # the three requests are now in flight
    small.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # Draining: not ready any more, but still answering.
    assert httpx.get(f"{small.url}/readyz", timeout=5).status_code == 503
    r = httpx.post(f"{small.url}/v1/classify?max_exit=1", content=image, headers=PNG, timeout=10)
    assert r.status_code == 200 and r.json()["results"][0]["exit"] == 1
    for t in threads:
        t.join(60)
    assert len(results) == 3
    for res in results:
        assert isinstance(res, httpx.Response), res
        assert res.status_code == 200 and res.json()["results"][0]["exit"] == 3
    code = small.proc.wait(30)
    assert code in (0, -signal.SIGTERM), small.output()
    log = small.output()
    assert "engine stopped" in log and "Application shutdown complete" in log
    assert stop_server(small) == code


def test_several_workers_serve_and_stop(served: Served, tmp_path: Path, expected: Any) -> None:
    log = tmp_path / "server.log"
    env = {"EXITWISE_TORCH_THREADS": "1", "EXITWISE_API_KEY": KEY}
    for server in running_server(
        served.path, log, "--workers", "2", "--drain-seconds", "0.2", env=env
    ):
        for i in range(6):
            _check_answers_correctly(server.url, served, expected, i)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0, server.output()
        assert server.output().count("Application shutdown complete") == 2
