"""``deadline_ms`` and degradation over a real server: reasons in every answer, tight deadlines
that bite under concurrency, bad values refused, stepping down under a flood and back up."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.serving_helpers import Served, ServerProcess, png, running_server, served_bundle

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return served_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("deadlines") / "server.log"
    env = {"EXITWISE_TORCH_THREADS": "1", "EXITWISE_BUDGET_CONTROL": "off"}
    yield from running_server(served.path, log, "--max-batch-size", "8", env=env)


def _post(url: str, served: Served, i: int, **params: Any) -> httpx.Response:
    body = png(served.test.pixels[i % len(served.test.pixels)])
    return httpx.post(f"{url}/v1/classify", content=body, headers=PNG, params=params, timeout=30)


def _flood(
    url: str, served: Served, n: int, clients: int, refused_ok: bool = False, **params: Any
) -> list[Any]:
    """``n`` requests from ``clients`` threads; the answers. ``refused_ok``: a 422 because the
    deadline has become shorter than exit 1 takes (the latency model follows the load) is
    allowed, and left out."""
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda i: _post(url, served, i, **params), range(n)))
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 422 and refused_ok]
    assert all("shorter than the first exit" in r.json()["error"] for r in refused)
    assert len(ok) + len(refused) == n and len(ok) >= n // 2, [r.text for r in answers][:3]
    return [r.json() for r in ok]


def test_every_answer_says_why_it_stopped(server: ServerProcess, served: Served) -> None:
    answers = _flood(server.url, served, 48, 8, max_exit=2)
    assert {r["stopped"] for a in answers for r in a["results"]} <= {"confident", "cap"}
    capped = [r for a in answers for r in a["results"] if r["stopped"] == "cap"]
    assert capped and all(r["exit"] == 2 for r in capped)


@pytest.mark.usefixtures("cpu_alone")
def test_tight_deadlines_bite_under_concurrency(server: ServerProcess, served: Served) -> None:
    model = httpx.get(f"{server.url}/v1/model").json()
    stages = model["latency_model"]
    assert [s["stage"] for s in stages] == [1, 2, 3, 4] and all(s["ms_per_batch"] for s in stages)
    first = stages[0]["ms_per_batch"]["1"]
    # Long enough for exit 1 and sending its answer (the margin's 1 ms floor; shorter is a
    # 422), too short for the whole network at 16 requests in flight.
    tight = 3 * first + 1.0
    answers = _flood(server.url, served, 96, 16, refused_ok=True, deadline_ms=tight)
    reasons = [r["stopped"] for a in answers for r in a["results"]]
    assert set(reasons) <= {"confident", "cap", "deadline"} and "deadline" in reasons
    loose = _flood(server.url, served, 32, 16, deadline_ms=20_000)
    assert "deadline" not in {r["stopped"] for a in loose for r in a["results"]}
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'exitwise_stops_total{reason="deadline"}' in metrics
    assert "exitwise_stage_seconds_bucket" in metrics


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5", "deadline_ms must be positive"),
        ("nan", "deadline_ms must be a finite number"),
        ("1e9", "at most the server's request timeout"),
        ("0.00001", "shorter than the first exit takes"),
        ("soon", "deadline_ms must be a number"),
    ],
)
def test_bad_deadlines_are_422(
    server: ServerProcess, served: Served, value: str, message: str
) -> None:
    r = _post(server.url, served, 0, deadline_ms=value)
    assert r.status_code == 422 and message in r.json()["error"], r.text


@pytest.mark.usefixtures("cpu_alone")
def test_degradation_engages_under_a_flood_and_lets_go_after(
    served: Served, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A low trigger (4 ms of queue; back below 1 ms) and no hold, so a short flood on a tiny
    # model shows it.
    log = tmp_path_factory.mktemp("degrade") / "server.log"
    env = {
        "EXITWISE_TORCH_THREADS": "1",
        "EXITWISE_BUDGET_CONTROL": "off",
        "EXITWISE_DEGRADE_QUEUE_MS": "4",
        "EXITWISE_DEGRADE_HOLD_MS": "0",
    }
    dear = max(p.expected_mflops for p in served.bundle.calibration().operating_points)
    for server in running_server(served.path, log, env=env):
        answers = _flood(server.url, served, 160, 32, budget_mflops=dear)
        degraded = [a for a in answers if a["operating_point"]["degraded_from"] is not None]
        assert degraded, "the flood should have stepped the server down"
        assert all(a["operating_point"]["degraded_from"] == "q2" for a in degraded)
        # A request may refuse it.
        kept = _flood(server.url, served, 32, 32, budget_mflops=dear, degrade="false")
        assert all(a["operating_point"]["degraded_from"] is None for a in kept)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'exitwise_degraded_total{operating_point="q' in metrics
        # Alone again (one request at a time), the remembered wait fades within about a tenth of
        # a second and the server steps back up, one point per request (no hold here).
        for i in range(200):
            last = _post(server.url, served, i, budget_mflops=dear).json()
            if last["operating_point"]["degraded_from"] is None:
                break
        assert last["operating_point"]["degraded_from"] is None
        assert "exitwise_degradation_level 0.0" in httpx.get(f"{server.url}/metrics").text
