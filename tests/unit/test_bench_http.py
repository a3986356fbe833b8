"""``exitwise bench http``: option checks made before any request, and the oracle's input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.errors import BenchError
from benchmarks.http_report import oracle_key, read_oracle
from cli import main

# Nothing listens on the discard port: every refusal below comes before a request is sent.
URL = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client", "curl"], "error: --client must be python or wrk, not 'curl'"),
        (
            ["--client", "wrk", "--images-per-request", "2"],
            "error: --client wrk sends one image per request; use --client python",
        ),
        (["--client-cpus", "0"], "error: --client-cpus applies to --client wrk"),
        (["--concurrency", "0"], "error: --concurrency: expected comma-separated integers"),
    ],
)
def test_refusals_come_before_any_request(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "http", "--url", URL, *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--overload", "1,x"], "error: --overload: expected comma-separated positive numbers"),
        (["--deadlines", "20,-5"], "error: --deadlines: expected comma-separated positive"),
        (
            ["--deadlines", "20", "--deadline-loads", "0"],
            "error: --deadline-loads: expected comma-separated positive numbers",
        ),
    ],
)
def test_scenario_options_are_read_before_any_request(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "http", "--url", URL, *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1


def test_an_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "http", "--url", URL, "--requests", "1"]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot reach {URL}")


def test_oracle_key_takes_the_measured_batch_at_or_below() -> None:
    times = {"1": [0.1], "32": [0.01]}
    assert oracle_key(times, 1) == "1"
    assert oracle_key(times, 16) == "1"
    assert oracle_key(times, 64) == "32"
    assert oracle_key({"8": [0.1]}, 1) == "8"  # nothing below: the smallest measured
    assert oracle_key(None, 8) is None


def test_read_oracle(tmp_path: Path) -> None:
    good = tmp_path / "engine.json"
    good.write_text(json.dumps({"oracle_seconds_per_image": {"1": [1, 2], "32": [0.5, 1]}}))
    assert read_oracle(good) == {"1": [1.0, 2.0], "32": [0.5, 1.0]}
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(BenchError, match="not a `bench engine --json` result"):
        read_oracle(bad)
