"""Prometheus for real: the Prometheus server scrapes a running ``exitwise serve`` with the scrape
job of docker/prometheus.yml, and every query of the Grafana dashboard is evaluated through
Prometheus's HTTP API after real traffic: each one answers, with the series and values the panel
needs (rates above zero, MFLOPs within the model's range, one replica, exits and stages by label).

Only the target changes (a static address instead of compose's DNS discovery) and the scrape
interval (1 s instead of 5 s, to keep the test short). Skipped where the ``prometheus`` binary is
missing (Debian: apt-get install prometheus).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy_helpers import DOCKER, dashboard, dashboard_targets, load_yaml
from tests.serving_helpers import (
    Served,
    ServerProcess,
    free_port,
    png,
    running_server,
    served_bundle,
)

pytestmark = pytest.mark.slow

SCRAPE_S = 1
# Grafana's $__rate_interval is at least four scrape intervals.
RATE_WINDOW = f"{8 * SCRAPE_S}s"


def _prometheus_binary() -> str:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not os.access(binary, os.X_OK):
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus)")
    return binary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Served]]:
    served = served_bundle(tmp_path_factory)
    log = tmp_path_factory.mktemp("prom-server") / "server.log"
    env = {"EXITWISE_TORCH_THREADS": "1"}
    for process in running_server(served.path, log, env=env):
        yield process, served


def scrape_config(target: str) -> dict[str, Any]:
    """docker/prometheus.yml with a static target and a short scrape interval."""
    config: dict[str, Any] = load_yaml(DOCKER / "prometheus.yml")
    config["global"]["scrape_interval"] = f"{SCRAPE_S}s"
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "dns_sd_configs" in job
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


@pytest.fixture(scope="module")
def prometheus(
    server: tuple[ServerProcess, Served], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    binary = _prometheus_binary()
    root = tmp_path_factory.mktemp("prometheus")
    target = server[0].url.removeprefix("http://")
    (root / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(target)))
    port = free_port()
    cmd = [
        binary,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = (root / "prometheus.log").open("wb")
    # Its own process group: the teardown ends it and nothing else.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (root / "prometheus.log").read_text()
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (root / "prometheus.log").read_text()
            time.sleep(0.2)
        # Targets reach the scrape loop some seconds after startup: wait for the first scrape.
        while not query(url, 'up{job="exitwise"}', time.time()):
            assert time.monotonic() < deadline, (root / "prometheus.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def query(url: str, expr: str, at: float) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr, "time": at}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _traffic(server: ServerProcess, served: Served, seconds: float) -> float:
    """Classifications at two budgets and a bad request, for ``seconds``; returns the end time."""
    files = [("f", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(served.test.pixels[:8])]
    end = time.monotonic() + seconds
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while time.monotonic() < end:
            for params in ({"max_exit": 1}, {"max_exit": 4}, {}):
                assert client.post("/v1/classify", files=files, params=params).status_code == 200
            bad = client.post("/v1/classify", content=b"x", headers={"content-type": "image/png"})
            assert bad.status_code == 400
            time.sleep(0.2)
    return time.time()


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def test_prometheus_evaluates_every_dashboard_query(
    prometheus: str, server: tuple[ServerProcess, Served]
) -> None:
    process, served = server
    # Enough traffic for several scrapes inside one rate window, then one more scrape.
    at = _traffic(process, served, seconds=5 * SCRAPE_S)
    time.sleep(2 * SCRAPE_S)
    targets = query(prometheus, 'up{job="exitwise"}', at)
    assert _values(targets) == [1.0], targets

    mflops = served.bundle.manifest.exit_mflops
    checked = 0
    for title, expr in dashboard_targets(dashboard()):
        result = query(prometheus, expr.replace("$__rate_interval", RATE_WINDOW), at)
        assert result, f"{title}: {expr} has no series"
        values = _values(result)
        if "histogram_quantile" in expr:  # buckets summed by le: a finite quantile
            assert all(math.isfinite(v) and v >= 0 for v in values), (title, values)
        elif expr.startswith("sum(rate(") and "/" not in expr:  # request and image rates
            assert all(v > 0 for v in values), (title, expr, values)
        checked += 1
        if "mflops_per_image_sum" in expr and "/" in expr:
            assert all(mflops[0] - 1e-6 <= v <= mflops[-1] + 1e-6 for v in values), values
        if title == "Replicas":
            assert values == [1.0]
        if title == "Exits per second":
            assert {r["metric"]["exit"] for r in result} >= {"1", "4"}
        if title == "Per-stage batch size":
            assert {r["metric"]["stage"] for r in result} == {"1", "2", "3", "4"}
        if title == "Errors by status":
            assert {r["metric"]["code"] for r in result} == {"400"} and min(values) > 0
        if title == "Served model":
            (info,) = result
            assert info["metric"]["device"] == "cpu" and info["metric"]["job"] == "exitwise"
    assert checked >= 20
