"""``exitwise bench train``: the side-by-side table, JSON, and markdown sections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.train_step import write_markdown
from cli import main

from ..training_helpers import one_thread  # noqa: F401  (autouse: one thread)

TINY = ["--set", "model.kwargs.channels=4", "--set", "model.kwargs.growth_rate=2",
        "--set", "model.kwargs.head_channels=8", "--set", "meta.hidden_size=16"]  # fmt: skip
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "fmnist.yaml")


def test_bench_train_table_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = tmp_path / "train.md"
    args = ["bench", "train", "--config", CONFIG, *TINY, "--steps", "1", "--warmup", "0",
            "--rounds", "1", "--batch-size", "8", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "| uniform | - |" in out and "| l2w | 100 |" in out and "<= 1.05x" in out
    text = md.read_text()
    assert text.startswith("# Training step benchmark") and "cpu:msdnet-fmnist:b8:fp32:t" in text
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {(r["weighting"], r["interval"]): r for r in result["rows"]}
    assert rows[("uniform", "-")]["ratio"] == 1.0
    meta, plain = rows[("l2w", "1")], rows[("l2w", "never")]
    derived = rows[("l2w", "100")]["ms_per_iteration"]
    expected = (99 * plain["ms_per_iteration"] + meta["ms_per_iteration"]) / 100
    assert derived == pytest.approx(expected, abs=0.02)
    assert result["batch_size"] == 8 and result["device"] == "cpu"


def test_markdown_sections_are_replaced_not_duplicated(tmp_path: Path) -> None:
    md = tmp_path / "train.md"
    write_markdown(md, "first cpu\n", "cpu:a")
    write_markdown(md, "gpu\n", "cuda:a")
    write_markdown(md, "second cpu\n", "cpu:a")
    text = md.read_text()
    assert "first cpu" not in text and text.count("second cpu") == 1 and "gpu" in text
    assert text.index("second cpu") < text.index("gpu")
