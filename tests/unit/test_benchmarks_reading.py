"""scripts/benchmarks_reading.py: the reading of docs/BENCHMARKS.md, from the benchmark files."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "docs" / "benchmarks"
sys.path.insert(0, str(REPO / "scripts"))

from benchmarks_reading import reading  # noqa: E402

# What the reading covers; drift, overload and deadlines are read elsewhere.
READ = (
    "engine.json",
    "http.json",
    "http-batched.json",
    "peer.json",
    "heavy-engine.json",
    "heavy-http.json",
    "backends.md",
    "calibration.json",
    "train.json",
)


def test_reads_the_real_files() -> None:
    lines = reading(BENCH)
    text = "\n".join(lines)
    assert lines[0] == "## Reading the figures"
    for file in READ:
        if (BENCH / file).exists():
            assert re.search(rf"^### .*\b{re.escape(file)}\b", text, re.M), file
    assert "drift.json" not in text and "overload.json" not in text
    # Figures come from the files: the calibration solve time and the training ratio, as read.
    cal = json.loads((BENCH / "calibration.json").read_text())
    assert f"{cal['solve_s']:.3f} s" in text
    train = json.loads((BENCH / "train.json").read_text())
    meta = next(r for r in train["rows"] if r["weighting"] == "l2w" and r["interval"] == "1")
    assert f"{meta['ratio']:.2f}x" in text
    assert all(isinstance(line, str) and "\n" not in line for line in lines)


def test_empty_folder(tmp_path: Path) -> None:
    assert reading(tmp_path) == []
    assert reading(tmp_path / "missing") == []


def test_one_file_alone(tmp_path: Path) -> None:
    shutil.copy(BENCH / "calibration.json", tmp_path)
    text = "\n".join(reading(tmp_path))
    assert "### Calibration speed (calibration.json)" in text
    assert "engine.json" not in text and "Training step" not in text
