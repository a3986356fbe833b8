"""scripts/benchmarks_targets.py: the deadline and overload targets, read from the files that
`scripts/benchmarks.sh load` writes, and the budget-3 speed-up over HTTP (median of rounds)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchmarks_targets import load_rows  # noqa: E402


def _over(m: float, degrade: bool, policy: str = "late", **more: Any) -> dict[str, Any]:
    row = {
        "multiple": m, "degrade": degrade, "policy": policy, "offered_per_s": 100.0 * m,
        "sent_per_s": 100.0 * m, "answered_p99_ms": 90.0, "answered_max_ms": 99.0,
        "goodput_per_s": min(100.0 * m, 180.0), "status_503": 0, "accuracy_estimate": 80.0,
        "within_5ms_pct": 100.0,
        "timeline": {"t": [0.0, 0.25], "level": [0.0, 2.0 if degrade else 0.0]},
    }  # fmt: skip
    row.update(more)
    return row


OVERLOAD = {
    "overload": {
        "deadline_ms": 100.0, "duration_s": 10.0, "cheapest_capacity_per_s": 200.0,
        "cheapest_point_accuracy": 78.0,
        "rows": [_over(1, False), _over(1, True), _over(2, False, status_503=40), _over(2, True),
                 _over(4, False), _over(4, True), _over(4, True, "strict", status_503=300)],
    }
}  # fmt: skip


def _sweep(load: float, d: float | None, p99: float, acc: float) -> dict[str, Any]:
    return {"load": load, "deadline_ms": d, "offered_per_s": 50.0, "sent_per_s": 49.0,
            "p99_ms": p99, "accuracy_estimate": acc}  # fmt: skip


DEADLINES = {
    "deadlines": {
        "loads": [0.5, 0.9], "duration_s": 10.0,
        "rows": [_sweep(0.5, None, 300.0, 79.0), _sweep(0.5, 20, 21.0, 78.6),
                 _sweep(0.5, 50, 51.5, 78.7), _sweep(0.9, None, 900.0, 79.0),
                 _sweep(0.9, 50, 51.0, 78.5), _sweep(0.9, 20, 22.0, 78.8)],
    }
}  # fmt: skip


def _verdicts(rows: list[str]) -> dict[str, str]:
    out = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 4, line
        out[cells[0]] = cells[3]
    return out


def test_every_target_met() -> None:
    got = _verdicts(load_rows(OVERLOAD, DEADLINES))
    assert set(got.values()) == {"met"}, got
    wanted = [
        "overload: offered rate achieved",
        "p99 of the answered",
        "goodput (answers within D per s)",
        "overload 2x, degradation on: 503s",
        "deadline_policy=strict: answers (not 503) within D + 5 ms",
        "degradation level over time",
        "deadline sweep at 0.5x the last exit's capacity: p99",
        "deadline sweep at 0.9x the last exit's capacity: p99",
        "deadline sweep at 0.9x: accuracy",
    ]
    for what in wanted:
        assert any(what in key for key in got), what


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        (lambda o, d: o["rows"][3].update(status_503=1), "overload 2x, degradation on: 503s"),
        (lambda o, d: o["rows"][5].update(answered_p99_ms=106.0), "p99 of the answered"),
        # 4x: 0.9 x the cheapest point's 200/s.
        (lambda o, d: o["rows"][5].update(goodput_per_s=179.0), "goodput"),
        (lambda o, d: o["rows"][6].update(within_5ms_pct=99.99), "deadline_policy=strict"),
        (lambda o, d: o["rows"][6].update(within_5ms_pct=None), "deadline_policy=strict"),
        (lambda o, d: o["rows"][0].update(sent_per_s=90.0), "offered rate achieved"),
        (lambda o, d: o["rows"][1].update(timeline={"t": [], "level": []}), "over time"),
        (lambda o, d: d["rows"][2].update(p99_ms=52.5), "sweep at 0.5x the last exit's"),
        (lambda o, d: o.update(stopped="before 4x: 503"), "overload: every run"),
        (lambda o, d: d.update(stopped="before 0.9x: 503"), "deadline sweep: every run"),
        # Sorted by D: 20 ms (78.8) then 50 ms (78.5 - 0.5 allowed) holds; 78.2 does not.
        (lambda o, d: d["rows"][4].update(accuracy_estimate=78.2), "sweep at 0.9x: accuracy"),
    ],
)
def test_each_target_can_fail(change: Any, failing: str) -> None:
    over, sweep = copy.deepcopy(OVERLOAD), copy.deepcopy(DEADLINES)
    change(over["overload"], sweep["deadlines"])
    got = _verdicts(load_rows(over, sweep))
    bad = [k for k, v in got.items() if v != "met"]
    assert len(bad) == 1 and failing in bad[0], got


def test_goodput_is_not_asked_beyond_what_was_sent() -> None:
    # The cheapest point serves 300/s: at 2x, 200/s sent, the floor is 0.9 x 200, not 0.9 x 300.
    over = copy.deepcopy(OVERLOAD)
    over["overload"]["cheapest_capacity_per_s"] = 300.0
    over["overload"]["rows"][3].update(goodput_per_s=185.0)
    over["overload"]["rows"][5].update(goodput_per_s=280.0)
    got = _verdicts(load_rows(over, None))
    key = next(k for k in got if "goodput" in k)
    assert got[key] == "met"
    over["overload"]["rows"][3].update(goodput_per_s=175.0)
    assert _verdicts(load_rows(over, None))[key] == "**not met**"


def test_missing_or_earlier_files() -> None:
    assert load_rows(None, None) == []
    old = load_rows(
        {"overload": {"rows": [{"multiple": 1, "degrade": False, "p99_ms": 1.0}]}},
        {"deadlines": {"rows": [{"deadline_ms": None}]}},
    )
    assert len(old) == 2 and all("an earlier format: re-measure" in line for line in old)


def test_budget_three_is_the_point_it_is_served_by_with_the_median_of_its_rounds() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks_targets import http_rows

    from benchmarks.http_report import add_ratios

    def row(workload: str, params: dict[str, float], rounds: list[float]) -> dict[str, Any]:
        return {
            "workload": workload, "params": params, "concurrency": 16,
            "images_per_s": sum(rounds) / len(rounds), "mean_mflops": 12.0 / (rounds[0] / 100),
            "exit_histogram": {"4": 1}, "requests_per_s_rounds": rounds,
        }  # fmt: skip

    rows = [
        row("last exit", {"max_exit": 4}, [100.0, 100.0, 80.0]),
        row("budget-1.80", {"budget_mflops": 1.8}, [300.0, 300.0, 300.0]),
        row("budget-2.40", {"budget_mflops": 2.4}, [210.0, 150.0, 190.0]),  # 2.1x, 1.5x, 2.375x
        row("budget-4.00", {"budget_mflops": 4.0}, [150.0, 150.0, 150.0]),
    ]
    add_ratios(rows, None)
    assert rows[2]["speedup_rounds"] == pytest.approx([2.1, 1.5, 2.375])
    assert rows[2]["speedup_median"] == pytest.approx(2.1)
    line = next(r for r in http_rows({"rows": rows}, None) if "budget_mflops=3" in r)
    assert "served by budget-2.40" in line and "median 2.10x" in line and line.endswith("met |")
    rows[2]["requests_per_s_rounds"] = [190.0, 150.0, 150.0]
    add_ratios(rows, None)
    line = next(r for r in http_rows({"rows": rows}, None) if "budget_mflops=3" in r)
    assert line.endswith("**not met** |")
