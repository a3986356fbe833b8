"""The C load client's pure parts: the latency histogram, the open-loop script and its
connections, the result line, and what is read from /metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.server_metrics import load_point, parse_metrics, served
from benchmarks.wrk import (
    MARK,
    Latency,
    open_connections,
    parse_result,
    write_bodies,
    write_script,
)

# 10 answers: 1, 2, ..., 9 ms and one of 100 ms (values in microseconds, in any order).
TEN = [100_000, 1, *[v for ms in range(1, 10) for v in (1000 * ms, 1)]]


def test_latency_quantiles_and_shares() -> None:
    lat = Latency.from_flat(TEN)
    assert lat.total == 10
    assert list(lat.values_us) == sorted(lat.values_us)
    assert lat.quantile_ms(0.5) == 5.0
    assert lat.quantile_ms(0.9) == 9.0
    assert lat.quantile_ms(0.99) == 100.0 and lat.quantile_ms(1.0) == 100.0
    assert lat.quantile_ms(0.0) == 1.0
    assert lat.count_within(9) == 9 and lat.count_within(8.999) == 8
    assert lat.share_within(100) == 1.0


@pytest.mark.parametrize(
    ("rate", "expected"), [(1.0, 4), (100.0, 125), (400.0, 500), (1600.0, 2000), (5000.0, 2000)]
)
def test_open_connections_cover_arrivals_in_flight_within_the_keep_alive(
    rate: float, expected: int
) -> None:
    n = open_connections(rate)
    assert n == expected
    # Each connection waits about horizon_s for its next arrival: well inside uvicorn's 5 s.
    assert n / rate <= 4.0 or n == 4


def test_the_open_loop_script_carries_the_schedule(tmp_path: Path) -> None:
    listing = write_bodies(tmp_path / "bodies", [b"png-1", b"png-2"])
    assert listing.read_text().count("\n") == 2
    headers = {"Content-Type": "image/png"}
    closed = write_script(tmp_path / "closed", listing, "/v1/classify?max_exit=4", headers)
    text = closed.read_text()
    # The closed loop leaves wrk's responses to C: no Lua call per response.
    assert "delay = function" not in text and "ffi" not in text
    assert "response = function" not in text
    assert '"/v1/classify?max_exit=4"' in text and MARK in text
    opened = write_script(
        tmp_path / "open", listing, "/v1/classify", headers, rate=400.0, connections=500, seed=7
    ).read_text()
    assert "delay = function" in opened and "math.randomseed(7)" in opened
    assert "local mean_ms = 2.500000000" in opened  # one schedule: 1000 / rate
    assert "summary.requests / 500" in opened  # wrk's own step, to take its samples out
    # Each request's id, which the server echoes, pairs its answer with its send.
    assert 'wrk.headers["X-Request-Id"] = id' in opened and "response = function" in opened
    with pytest.raises(ValueError, match="rate must be positive"):
        write_script(tmp_path / "bad", listing, "/", headers, rate=0.0)


def test_result_line_with_and_without_the_open_loop() -> None:
    base = {
        "requests": 10, "duration_us": 2_000_000, "non_2xx": 1, "connect": 0, "read": 1,
        "write": 0, "timeout": 0, "p50_us": 5000, "p95_us": 9000, "p99_us": 100000,
        "max_us": 100000, "mean_us": 14500.0,
    }  # fmt: skip
    closed = parse_result(base)
    assert closed.sent is None and closed.latency is None and closed.sent_per_s is None
    assert closed.requests_per_s == 5.0 and closed.socket_errors == 1
    more = {"sent": 12, "late": 3, "lag_sum_ms": 6.0, "lag_max_ms": 2.5, "removed": 4}
    answered, refused = TEN[2:], [500, 1]  # nine answers of 1..9 ms, a 503 in 0.5 ms
    opened = parse_result(
        {**base, **more, "histogram": TEN, "answered": answered, "refused": refused}
    )
    assert opened.sent == 12 and opened.sent_per_s == 6.0
    assert opened.late_sends == 3 and opened.lag_mean_ms == 0.5 and opened.lag_max_ms == 2.5
    assert opened.omission_samples == 4
    assert opened.latency is not None and opened.latency.total == 10
    assert opened.answered is not None and opened.answered.quantile_ms(1.0) == 9.0
    assert opened.refused is not None and opened.refused.total == 1 and opened.unpaired == 0
    assert closed.answered is None and closed.refused is None


METRICS = """# HELP exitwise_requests_total HTTP requests
exitwise_requests_total{code="200",route="/v1/classify"} 90.0
exitwise_requests_total{code="503",route="/v1/classify"} 12.0
exitwise_requests_total{code="200",route="/metrics"} 7.0
exitwise_exits_total{exit="1"} 30.0
exitwise_exits_total{exit="4"} 60.0
exitwise_mflops_per_image_sum 800.0
exitwise_stops_total{reason="cap"} 60.0
exitwise_stops_total{reason="deadline"} 30.0
exitwise_degraded_total{operating_point="budget-3.00"} 20.0
exitwise_degradation_level 2.0
exitwise_refused_total{reason="queue_full"} 4.0
exitwise_refused_total{reason="deadline_shed"} 8.0
exitwise_refused_total{reason="not_ready"} 0.0
exitwise_stage_queue_depth{stage="1"} 5.0
exitwise_stage_queue_depth{stage="2"} 3.0
process_cpu_seconds_total 12.5
exitwise_engine_cpu_seconds_total 7.25
exitwise_request_duration_seconds_bucket{le="0.25",route="/v1/classify"} 95.0
exitwise_request_duration_seconds_bucket{le="+Inf",route="/v1/classify"} 102.0
"""


def test_metrics_deltas_and_the_load_point() -> None:
    after = parse_metrics(METRICS)
    before = parse_metrics(
        'exitwise_requests_total{code="200",route="/v1/classify"} 40.0\n'
        'exitwise_exits_total{exit="4"} 40.0\nexitwise_mflops_per_image_sum 480.0\n'
        'exitwise_stops_total{reason="cap"} 40.0\nprocess_cpu_seconds_total 10.0\n'
        'exitwise_request_duration_seconds_bucket{le="0.25",route="/v1/classify"} 40.0\n'
        'exitwise_request_duration_seconds_bucket{le="+Inf",route="/v1/classify"} 42.0\n'
    )
    did = served(before, after, 4)
    assert did["over_250ms"] == 5  # 7 over 250 ms in all, 2 of them before
    assert served({}, {}, 4)["over_250ms"] is None  # not exported
    assert did["cpu_s"] == {"process": 2.5, "engine": 7.25}  # the engine's first scrape: from 0
    assert did["exit_histogram"] == {"1": 30, "4": 20} and did["images"] == 50
    assert did["mean_mflops"] == pytest.approx(320 / 50)
    assert did["statuses"] == {"200": 50, "503": 12}
    assert did["stops"] == {"cap": 20, "deadline": 30}
    assert did["degraded"] == {"budget-3.00": 20}
    assert did["refused"] == {"deadline_shed": 8, "queue_full": 4}
    assert load_point(after) == (2.0, 20.0, 12.0, 8.0)
    assert load_point({}) == (0.0, 0.0, 0.0, 0.0)
    assert math.isnan(served({}, {}, 2)["mean_mflops"])
    assert served({}, {}, 2)["cpu_s"] == {"process": None, "engine": None}  # not exported
