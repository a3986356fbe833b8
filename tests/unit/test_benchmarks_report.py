"""scripts/benchmarks_report.py: docs/serving.md's budget-control figures come from drift.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from benchmarks_report import drift_figures, with_block  # noqa: E402


def test_the_block_between_its_markers_is_replaced_and_nothing_else() -> None:
    text = "before\n<!-- figures -->\nold\n<!-- /figures -->\nafter\n"
    out = with_block(text, "figures", ["new 1", "new 2"])
    assert out == "before\n<!-- figures -->\nnew 1\nnew 2\n<!-- /figures -->\nafter\n"
    assert with_block(out, "figures", ["new 1", "new 2"]) == out  # idempotent
    with pytest.raises(SystemExit, match="no <!-- other -->"):
        with_block(text, "other", [])


def test_the_figures_are_read_from_drift_json(tmp_path: Path) -> None:
    assert drift_figures(tmp_path) == ["Not measured (no docs/benchmarks/drift.json)."]
    run = {"control": True, "control_seconds": 0.5, "compute_seconds": 100.0}
    clean = {"phase": "clean", "same_exit_on": 1.0}
    (tmp_path / "drift.json").write_text(json.dumps({"runs": [run], "rows": [clean]}))
    lines = drift_figures(tmp_path)
    assert any("budget control's cost" in line and "0.50 %" in line for line in lines)
    assert any("100.0 % (worst point)" in line for line in lines)


def test_the_serving_page_holds_the_block() -> None:
    text = (REPO / "docs" / "serving.md").read_text()
    assert "<!-- drift-figures -->" in text and "<!-- /drift-figures -->" in text
