"""The fresh-clone demo record: what it reports against issue 25's targets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from demo_fresh import markdown  # noqa: E402


def record(seconds: float, first: float, last: float) -> dict[str, Any]:
    return {
        "commit": "abc1234",
        "cpu_cores": 2,
        "machine": "x86_64",
        "make_demo_s": seconds,
        "exits": [
            {"exit": 1, "mflops": 1.63, "test_top1": first},
            {"exit": 2, "mflops": 3.80, "test_top1": 89.5},
            {"exit": 3, "mflops": 7.80, "test_top1": 90.0},
            {"exit": 4, "mflops": 12.10, "test_top1": last},
        ],
        "operating_points": [
            {"name": "budget-1.80", "test_mflops": 1.80, "test_accuracy": 88.7},
            {"name": "budget-4.00", "test_mflops": 4.00, "test_accuracy": 90.1},
        ],
        "trade_off": "the trade-off on the test images: full network 12.1 MFLOPs 90.1 %",
    }


def test_a_demo_that_meets_the_targets_says_so_and_lists_every_point_dearest_first() -> None:
    text = markdown(record(375.0, 87.78, 90.07))
    assert "6.2 min | met" in text
    assert "90.07 % | met" in text
    assert "2.29 points | met" in text
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")]
    served = rows[rows.index("| served by") + 1 :]
    assert served == [
        "| exit 4 (the full network)",
        "| budget-4.00",
        "| budget-1.80",
        "| exit 3 alone",
        "| exit 2 alone",
        "| exit 1 alone",
    ]
    assert "full network 12.1 MFLOPs 90.1 %" in text


def test_a_slow_or_flat_demo_is_reported_as_not_met() -> None:
    text = markdown(record(600.0, 89.0, 87.5))
    assert text.count("**not met**") == 3
