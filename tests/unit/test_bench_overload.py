"""The overload and deadline benchmarks' pure parts: the accuracy estimate from the
calibration's test figures, a run's row from wrk's histogram and the server's counts, the tables
and the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import deadline_sweep, overload_report
from benchmarks.overload import accuracy_estimate, open_row
from benchmarks.wrk import Latency, WrkResult

INFO = {
    "exits": [{"test_accuracy": a} for a in (70.0, 80.0, 90.0)],
    "operating_points": [
        {"name": "cheap", "expected_mflops": 1.0,
         "test": {"accuracy": 75.0, "exit_fractions": [0.5, 0.5, 0.0]}},
        {"name": "dear", "expected_mflops": 2.0,
         "test": {"accuracy": 85.0, "exit_fractions": [0.0, 0.5, 0.5]}},
    ],
}  # fmt: skip


def _did(hist: dict[str, int], degraded: dict[str, int], **more: Any) -> dict[str, Any]:
    return {
        "images": sum(hist.values()),
        "exit_histogram": hist,
        "degraded": degraded,
        "statuses": more.get("statuses", {}),
        "stops": more.get("stops", {}),
        "mean_mflops": 2.0,
        "cpu_s": more.get("cpu_s", {"process": 1.9, "engine": 0.8}),
    }


def test_full_network_answers_count_the_exit_they_came_from() -> None:
    # A deadline stopped half of them at exit 1: not the last exit's accuracy.
    assert accuracy_estimate(INFO, _did({"1": 50, "3": 50}, {})) == pytest.approx(80.0)
    assert accuracy_estimate(INFO, _did({"3": 10}, {})) == pytest.approx(90.0)


def test_stepped_down_answers_count_their_point_and_leave_the_rest_exits() -> None:
    # 40 stepped down to "cheap" (expected at exits 1 and 2, 20 each); the 60 others ran to
    # exit 3: 40 x 75 + 60 x 90.
    did = _did({"1": 20, "2": 20, "3": 60}, {"cheap": 40})
    assert accuracy_estimate(INFO, did) == pytest.approx((40 * 75 + 60 * 90) / 100)


def test_no_answers_or_no_test_figures_give_no_estimate() -> None:
    assert accuracy_estimate(INFO, _did({}, {})) is None
    bare = {**INFO, "exits": [{"test_accuracy": None}] * 3}
    assert accuracy_estimate(bare, _did({"3": 5}, {})) is None


def _run(latencies_ms: list[float], refused: int, sent: int, seconds: float = 2.0) -> WrkResult:
    """A run whose first ``refused`` requests of ``latencies_ms`` were refused (503s)."""

    def flat(ms: list[float]) -> Latency:
        return Latency.from_flat([v for x in ms for v in (round(x * 1000), 1)])

    return WrkResult(
        requests=len(latencies_ms), seconds=seconds, non_2xx=refused, socket_errors=0,
        p50_ms=0.0, p95_ms=0.0, p99_ms=0.0, max_ms=0.0, mean_ms=0.0, sent=sent, late_sends=2,
        latency=flat(latencies_ms), answered=flat(latencies_ms[refused:]),
        refused=flat(latencies_ms[:refused]),
    )  # fmt: skip


def test_a_row_counts_goodput_from_the_answered_and_leaves_the_refusals_out() -> None:
    # 100 requests in 2 s: 20 refused, 19 at once (0.5 ms) and one after 900 ms (its request
    # waited for the server behind a burst); 70 answered in 50 ms, 10 in 120 ms. The slow
    # refusal is no answer: the answered figures leave it out.
    lat = [0.5] * 19 + [900.0] + [50.0] * 70 + [120.0] * 10
    did = _did({"3": 80}, {}, statuses={"200": 80, "503": 20}, stops={"cap": 80})
    did["over_250ms"] = 0
    row = open_row(
        _run(lat, 20, sent=104), did, INFO, offered_per_s=50.0, connections=63, deadline_ms=100
    )
    assert row["sent_per_s"] == 52.0 and row["offered_per_s"] == 50.0
    assert row["late_sends_pct"] == pytest.approx(100 * 2 / 104)
    assert row["answered_per_s"] == 40.0 and row["refused"] == 20
    assert row["goodput_per_s"] == 35.0 and row["in_time_pct"] == 70.0
    assert row["within_pct"] == pytest.approx(87.5) and row["within_5ms_pct"] == 87.5
    assert row["p50_ms"] == 50.0 and row["answered_p50_ms"] == 50.0
    assert row["answered_p99_ms"] == 120.0 and row["max_ms"] == 900.0
    assert row["refused_max_ms"] == 900.0 and row["unpaired"] == 0
    assert row["stops"] == {"cap": 80} and row["accuracy_estimate"] == pytest.approx(90.0)
    assert row["client_over_250ms"] == 1 and row["server_over_250ms"] == 0
    assert row["answered_over_250ms"] == 0 and row["refused_over_250ms"] == 1
    # 1.9 s of the server's CPU in 2 s, 0.8 s of it the engine worker's.
    assert row["process_cores"] == pytest.approx(0.95) and row["engine_cores"] == 0.4
    unknown = _did({"3": 80}, {}, cpu_s={"process": None, "engine": None})  # another server
    other = open_row(
        _run(lat, 20, sent=104), unknown, INFO, offered_per_s=50.0, connections=63,
        deadline_ms=100,
    )  # fmt: skip
    assert other["process_cores"] is None and other["engine_cores"] is None
    # The host's TCP counters over the run, where measured (None where not).
    assert row["listen_drops"] is None and row["tcp_timeouts"] is None
    did["kernel"] = {"listen_drops": 12, "tcp_timeouts": 3}
    counted = open_row(
        _run(lat, 20, sent=104), did, INFO, offered_per_s=50.0, connections=63, deadline_ms=100
    )
    assert counted["listen_drops"] == 12 and counted["tcp_timeouts"] == 3
    # Without a deadline: no shares, no goodput.
    bare = open_row(
        _run(lat, 20, sent=100), did, INFO, offered_per_s=50.0, connections=63, deadline_ms=None
    )
    assert "goodput_per_s" not in bare and "within_pct" not in bare
    with pytest.raises(ValueError, match="open-loop run"):
        open_row(
            WrkResult(1, 1.0, 0, 0, 1, 1, 1, 1, 1), did, INFO, offered_per_s=1.0, connections=4,
            deadline_ms=None,
        )  # fmt: skip


def _overload_result() -> dict[str, Any]:
    rows = []
    for m, degrade, policy in [(1.0, False, "late"), (1.0, True, "late"), (2.0, False, "late"),
                               (2.0, True, "late"), (2.0, True, "strict")]:  # fmt: skip
        refused = 30 if policy == "strict" else 0
        # The strict run: two answers took 900 ms at the client, one of them at the server.
        slow = [900.0] * 2 if policy == "strict" else []
        lat = [0.4] * refused + [40.0 * m] * (100 - refused - len(slow)) + slow
        did = _did({"1": 50, "3": 50 - refused}, {"cheap": 10} if degrade else {},
                   statuses={"200": 100 - refused, "503": refused})  # fmt: skip
        did["over_250ms"] = len(slow) // 2
        did["kernel"] = {"listen_drops": 7 if policy == "strict" else 0, "tcp_timeouts": 2}
        row = {
            "multiple": m, "degrade": degrade, "policy": policy,
            **open_row(_run(lat, refused, sent=round(100 * m)), did, INFO,
                       offered_per_s=50.0 * m, connections=64, deadline_ms=100.0),
            "timeline": {"t": [0.0, 0.25, 0.5], "level": [0.0, 1.0, 2.0 * degrade],
                         "degraded": [0, 3, 9], "refused": [0, 0, refused], "queued": [0, 4, 2]},
        }  # fmt: skip
        row["status_503"] = refused
        row["refused_by"] = {"deadline_strict": refused} if refused else {}
        row["goodput_vs_cheapest"] = row["goodput_per_s"] / 80.0
        rows.append(row)
    return {
        "cheapest_point": "cheap", "cheapest_point_accuracy": 75.0,
        "points_test_accuracy": [75.0, 85.0], "capacity_per_s": 50.0,
        "cheapest_capacity_per_s": 80.0, "closed_connections": 16, "deadline_ms": 100.0,
        "duration_s": 2.0, "rows": rows,
    }  # fmt: skip


def test_the_overload_table_and_figure(tmp_path: Path) -> None:
    result = _overload_result()
    table = overload_report.markdown(result)
    assert "last exit 50 requests/s, cheap 80 requests/s" in table
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| offered (asked / sent per s) | degrade | policy |")
    assert len(lines) == 1 + len(result["rows"])
    assert "| 2x (100 / 100) | on | strict |" in table and "Stopped" not in table
    assert "| 30 (deadline_strict 30) |" in table  # the 503s, and why the server refused them
    assert "| cores: server / engine | listen drops |" in lines[0] and "| 0.95 / 0.40 |" in table
    assert "| listen drops | over 250 ms: answered / refused / server |" in lines[0]
    # The strict run: the host's drops, and a slow answer the server never saw.
    assert lines[-1].endswith("| 0.95 / 0.40 | 7 | 2 / 0 / 1 |")
    assert lines[1].endswith("| 0 / 0 / 0 |")
    result["stopped"] = "before 4x, degrade True, late: 503 ..."
    assert overload_report.markdown(result).endswith(
        "Stopped: the server did not settle before 4x, degrade True, late: 503 ...."
    )
    figure = tmp_path / "overload.png"
    overload_report.plot(result, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_deadline_table() -> None:
    did = _did({"1": 10, "3": 90}, {}, stops={"cap": 90, "deadline": 10})
    rows = [
        {"load": 0.5, "deadline_ms": d,
         **open_row(_run([10.0] * 100, 0, sent=50), did, INFO, offered_per_s=25.0,
                    connections=32, deadline_ms=d)}
        for d in (None, 20.0)
    ]  # fmt: skip
    table = deadline_sweep.markdown(
        {"capacity_per_s": 50.0, "closed_connections": 16, "rows": rows}
    )
    assert "| 0.5x (25 / 25) | none | 10.00 | 10.00 | 10.00 | - | - | 0 / 90 / 10 / 0 |" in table
    assert "| 0.5x (25 / 25) | 20 | 10.00 | 10.00 | 10.00 | 100.0% | 100.0% |" in table
    assert "1:10 3:90" in table
