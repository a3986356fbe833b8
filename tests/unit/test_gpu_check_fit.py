"""scripts/gpu_check.py: which carried wheels get installed, and how many epochs of the comparison
fit a time box (the arithmetic the GPU check trusts before it can measure anything else)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from gpu_check import AFTER_RUNS_S, RUN_OVERHEAD_S, Sizes, fit, missing, read_recipe

REPO = Path(__file__).resolve().parents[2]
PAPER = Sizes(epochs=30, batch_size=1024, train_subset=None, heldout_size=5000)


def _bench(uniform: float, l2w: float) -> dict[str, object]:
    return {"raw_ms": {"uniform": [uniform, uniform + 1], "l2w_meta": [l2w, l2w + 2, l2w - 2]}}


def test_epochs_fit_the_box_from_the_shared_l2w_iteration() -> None:
    # 53 iterations of 150 ms alone, 3x slower shared: 23.85 s per epoch.
    plan = fit(_bench(40, 150), [_bench(120, 450)] * 7, 300.0, PAPER, runs=7)
    assert plan["iterations_per_epoch"] == 55000 // 1024 == 53
    assert plan["slowdown_l2w"] == 3.0
    assert plan["epochs"] == int((300 - RUN_OVERHEAD_S - AFTER_RUNS_S) // (53 * 0.15 * 3))
    assert plan["estimated_total_s"] <= 300
    # Without a shared measurement the runs are taken to share the GPU serially.
    serial = fit(_bench(40, 150), [], 300.0, PAPER, runs=7)
    assert serial["slowdown_l2w"] == 7 and serial["epochs"] < plan["epochs"]
    # Never more than the recipe asks, never less than one.
    assert fit(_bench(1, 2), [], 1e6, PAPER, runs=7)["epochs"] == 30
    assert fit(_bench(40, 150), [], 10.0, PAPER, runs=7)["epochs"] == 1


def test_recipe_sizes_are_read_with_overrides() -> None:
    config = str(REPO / "configs" / "fmnist-rgb-paper.yaml")
    assert read_recipe(config, []) == PAPER
    tiny = read_recipe(config, ["batch_size=32", "data.train_subset=64", "data.heldout_size=100"])
    assert tiny == Sizes(epochs=30, batch_size=32, train_subset=64, heldout_size=100)


def test_only_wheels_missing_or_newer_than_installed_are_installed(tmp_path: Path) -> None:
    pytest.importorskip("packaging")
    for name in (
        "pydantic-0.0.1-py3-none-any.whl",  # installed, newer: kept
        "pydantic-999.0-py3-none-any.whl",  # installed, older than this: installed
        "surely_not_installed_dist-1.0-py3-none-any.whl",  # absent: installed
    ):
        (tmp_path / name).write_bytes(b"")
    assert [w.name for w in missing(tmp_path)] == [
        "pydantic-999.0-py3-none-any.whl",
        "surely_not_installed_dist-1.0-py3-none-any.whl",
    ]
