"""The load clients for real: ``bench http --client wrk`` against ``exitwise serve``, and
``bench peer`` (exitwise, then LitServe, on the same bundle). Skipped without ``wrk`` (Debian
package ``wrk``) or, for the peer, without LitServe (``pip install 'exitwise[peer]'``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving_helpers import (
    REPO,
    Served,
    ServerProcess,
    free_port,
    running_server,
    served_bundle,
)

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt install wrk)")
needs_litserve = pytest.mark.skipif(
    importlib.util.find_spec("litserve") is None,
    reason="needs LitServe (pip install 'exitwise[peer]')",
)
pytestmark = [pytest.mark.slow, needs_wrk]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server-wrk") / "server.log"
    yield from running_server(
        served.path, log, "--torch-threads", "1", env={"EXITWISE_API_KEY": "k"}
    )


def _exitwise(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", *args]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def test_bench_http_with_the_c_client(
    server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "wrk.json"
    done = _exitwise(
        "bench", "http", "--url", server.url, "--client", "wrk", "--concurrency", "1,4",
        "--duration", "1", "--budgets", "exit2", "--num-images", "20", "--api-key", "k",
        "--data-root", str(served.data_root), "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["client"] == "wrk"
    rows = data["rows"]
    assert [(r["workload"], r["concurrency"]) for r in rows] == [
        ("last exit", 1), ("exit 2", 1), ("last exit", 4), ("exit 2", 4)
    ]  # fmt: skip
    for r in rows:
        # What the server did (its /metrics) agrees with what wrk counted, up to the requests
        # in flight when wrk stopped (at most one per connection).
        assert r["requests"] > 0 and r["ok"] == r["requests"] and r["transport_errors"] == 0
        served_images = sum(r["exit_histogram"].values())
        assert r["requests"] <= served_images <= r["requests"] + r["concurrency"]
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    k = str(len(served.bundle.manifest.exit_mflops))
    assert set(rows[0]["exit_histogram"]) == {k} and set(rows[1]["exit_histogram"]) == {"2"}
    assert rows[1]["mflops_ratio"] > 1.0 and rows[0]["speedup"] == 1.0
    assert "| workload |" in done.stdout


def test_c_client_refuses_several_images_per_request(server: ServerProcess) -> None:
    done = _exitwise(
        "bench", "http", "--url", server.url, "--client", "wrk", "--images-per-request", "4"
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --client wrk sends one image per request; use --client python"
    ]


@needs_litserve
def test_bench_peer_runs_both_servers_and_leaves_nothing(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "peer.json"
    port = free_port()
    before = _pids(f"--port {port}|spawn_main")
    done = _exitwise(
        "bench", "peer", str(served.path), "--connections", "2", "--duration", "1",
        "--rounds", "1", "--num-images", "16", "--data-root", str(served.data_root),
        "--port", str(port), "--server-cpus", "", "--client-cpus", "",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    servers = {(r["server"], r["workload"]) for r in rows}
    assert ("litserve", "full network") in servers and ("exitwise", "last exit") in servers
    for r in rows:
        assert r["requests"] > 0 and r["errors"] == 0
        assert r["vs_litserve"] is not None
    # Both servers were stopped with their whole process group (LitServe's workers too).
    assert _pids(f"--port {port}|spawn_main") <= before


def _pids(pattern: str) -> set[str]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return set(found.stdout.split())


def test_overload_scenario_runs_degradation_off_and_on(
    server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "overload.json"
    done = _exitwise(
        "bench", "http", "--url", server.url, "--overload", "1,2", "--duration", "1",
        "--overload-deadline-ms", "200", "--num-images", "20", "--api-key", "k",
        "--data-root", str(served.data_root), "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["overload"]
    assert result["capacity_per_s"] > 0
    rows = result["rows"]
    assert [(r["multiple"], r["degrade"]) for r in rows] == [
        (1.0, False), (1.0, True), (2.0, False), (2.0, True)
    ]  # fmt: skip
    for r in rows:
        assert r["requests"] > 0 and 0 <= r["in_time_pct"] <= 100
        assert r["goodput_per_s"] <= r["answered_per_s"] + 1e-9
        assert r["accuracy_estimate"] is None or 0 <= r["accuracy_estimate"] <= 100
    assert "| offered | degrade |" in done.stdout


def test_deadline_sweep_reports_server_time_accuracy_and_reasons(
    server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "deadlines.json"
    done = _exitwise(
        "bench", "http", "--url", server.url, "--deadlines", "1000", "--concurrency", "4",
        "--requests", "40", "--num-images", "20", "--api-key", "k",
        "--data-root", str(served.data_root), "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["deadlines"]["rows"]
    assert [r["deadline_ms"] for r in rows] == [None, 1000.0]
    for r in rows:
        assert r["statuses"] == {"200": 40}
        assert sum(r["reasons"].values()) == 40 and 0 <= r["accuracy"] <= 100
        # The engine's part (queue + compute) is inside the server's time.
        assert 0 < r["engine_p50_ms"] <= r["p50_ms"]
    # A deadline of a second changes nothing for a tiny model: no image stops for it.
    assert rows[1]["reasons"].get("deadline", 0) == 0 and rows[1]["within_pct"] == 100.0
