"""The load clients for real: ``bench http --client wrk`` against ``exitwise serve``, and
``bench peer`` (exitwise, then LitServe, on the same bundle), the open-loop scenarios
(``--overload``, ``--deadlines``) and the open-loop schedule against a plain server. Skipped
without ``wrk`` (Debian package ``wrk``) or, for the peer, without LitServe (``pip install
'exitwise[peer]'``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.wrk import open_connections, run_wrk, write_bodies, write_script
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


def test_overload_scenario_runs_degradation_off_and_on_then_strict(
    server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    out, figure = tmp_path / "overload.json", tmp_path / "overload.png"
    done = _exitwise(
        "bench", "http", "--url", server.url, "--overload", "1,2", "--duration", "1",
        "--overload-deadline-ms", "200", "--num-images", "20", "--api-key", "k",
        "--data-root", str(served.data_root), "--json", str(out), "--figure", str(figure),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["overload"]
    assert result["capacity_per_s"] > 0 and result["cheapest_capacity_per_s"] > 0
    rows = result["rows"]
    assert [(r["multiple"], r["degrade"], r["policy"]) for r in rows] == [
        (1.0, False, "late"), (1.0, True, "late"), (2.0, False, "late"), (2.0, True, "late"),
        (2.0, True, "strict"),
    ]  # fmt: skip
    for r in rows:
        # Open loop at the rate asked: the connections cover what is in flight.
        assert r["offered_per_s"] == pytest.approx(r["multiple"] * result["capacity_per_s"])
        assert r["sent_per_s"] > 0 and r["connections"] >= 4
        assert r["requests"] > 0 and 0 <= r["in_time_pct"] <= 100
        assert r["goodput_per_s"] <= r["answered_per_s"] + 1e-9
        assert r["accuracy_estimate"] is None or 0 <= r["accuracy_estimate"] <= 100
        if r["answered_p99_ms"] is not None:
            assert r["answered_p50_ms"] <= r["answered_p99_ms"] <= r["answered_max_ms"]
        # The server's counts agree with wrk's, up to the requests in flight when wrk stopped.
        assert r["refused"] <= sum(v for k, v in r["statuses"].items() if k != "200")
        # The server's CPU over the run, and the engine worker's part of it (two cores here).
        assert 0 < r["process_cores"] <= 2.5 and 0 < r["engine_cores"] <= r["process_cores"]
        # The degradation level was sampled through each run.
        series = r["timeline"]
        assert len(series["t"]) >= 2 and len(series["level"]) == len(series["t"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| offered (asked / sent per s) | degrade | policy |" in done.stdout


def test_deadline_sweep_open_loop_with_client_latency(
    server: ServerProcess, served: Served, tmp_path: Path
) -> None:
    out = tmp_path / "deadlines.json"
    done = _exitwise(
        "bench", "http", "--url", server.url, "--deadlines", "1000", "--deadline-loads", "0.5",
        "--duration", "1", "--num-images", "20", "--api-key", "k",
        "--data-root", str(served.data_root), "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["deadlines"]
    assert result["loads"] == [0.5] and result["capacity_per_s"] > 0
    rows = result["rows"]
    assert [(r["load"], r["deadline_ms"]) for r in rows] == [(0.5, None), (0.5, 1000.0)]
    k = str(len(served.bundle.manifest.exit_mflops))
    for r in rows:
        assert r["offered_per_s"] == pytest.approx(0.5 * result["capacity_per_s"])
        assert r["requests"] > 0 and r["refused"] == 0 and r["statuses"].get("503", 0) == 0
        assert r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
        # The full network: every image ran to the last exit (its cap), none was stopped early.
        assert set(r["exit_histogram"]) == {k} and set(r["stops"]) == {"cap"}
        assert 0 <= r["accuracy_estimate"] <= 100
    # A deadline of a second changes nothing for a tiny model at half its capacity.
    assert rows[1]["within_pct"] == 100.0 and rows[1]["within_2ms_pct"] == 100.0
    assert "| load (asked / sent per s) | deadline_ms |" in done.stdout


class _Quick(BaseHTTPRequestHandler):
    """Answers every POST at once, but every twentieth after 300 ms, and refuses every
    twentieth from the tenth (a 503, at once); echoes the request's X-Request-Id.

    wrk corrects against twice the 90th percentile latency of its first half second. With one
    answer in ten slow, that percentile could itself be a slow one, and then nothing was
    corrected (once, under a full test run); one in twenty keeps it a quick one."""

    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with _Quick.lock:
            _Quick.count += 1
            count = _Quick.count  # this request's: another thread moves the shared one on
        if count % 20 == 0:
            time.sleep(0.3)
        self.send_response(503 if count % 20 == 10 else 200)
        if (ident := self.headers.get("X-Request-Id")) is not None:
            self.send_header("X-Request-Id", ident)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk closes its connections at the end, answers in flight or not


def test_open_loop_sends_the_rate_asked_and_keeps_wrk_histogram_honest(tmp_path: Path) -> None:
    # A plain server: the schedule (rate sent), and the histogram without wrk's coordinated-
    # omission samples (8 connections at 200/s, about 40 ms between one connection's requests:
    # wrk adds some for the 300 ms answers).
    httpd = _Server(("127.0.0.1", 0), _Quick)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        listing = write_bodies(tmp_path / "bodies", [b"a" * 100, b"b" * 200])
        runs = {}
        for connections in (open_connections(200.0), 8):
            script = write_script(
                tmp_path / f"c{connections}", listing, "/", {}, rate=200.0,
                connections=connections, seed=connections,
            )  # fmt: skip
            runs[connections] = run_wrk(url, script, connections=connections, duration_s=2)
    finally:
        httpd.shutdown()
    wide, narrow = runs[open_connections(200.0)], runs[8]
    for run in (wide, narrow):
        assert run.latency is not None and run.latency.total == run.requests
        assert run.sent is not None and run.sent >= run.requests
        # Every answer paired with its send by its id, by status: the slow ones were answered.
        assert run.answered is not None and run.refused is not None and run.unpaired == 0
        assert run.refused.total == run.non_2xx > 0
        assert run.answered.total + run.refused.total == run.requests
        # The 300 ms answers among the answered; the refusals mostly quick (one may still wait
        # for this small server to accept its connection).
        assert run.answered.total - run.answered.count_within(299) > 0
        assert run.refused.quantile_ms(0.5) < 300  # type: ignore[operator]
    # Enough connections: what was asked (a Poisson count of about 400, so +-20 %), on time.
    assert wide.sent_per_s == pytest.approx(200.0, rel=0.2)
    assert wide.omission_samples == 0
    # Eight connections: wrk corrected, and the script took its samples out again.
    assert narrow.omission_samples > 0
