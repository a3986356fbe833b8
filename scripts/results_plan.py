"""What scripts/results.py runs: the arms, the seeds and the shared overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WEIGHTINGS = ("l2w", "uniform")
LABELS = {"l2w": "L2W-DEN", "uniform": "uniform"}
COLOURS = {"l2w": "tab:red", "uniform": "tab:blue"}


@dataclass(frozen=True)
class Plan:
    runs: Path
    seeds: tuple[int, ...]
    epochs: int
    train_subset: int | None
    budgets: tuple[float, ...]
    jobs: int
    data_root: str | None

    def overrides(self, weighting: str, seed: int) -> list[str]:
        sets = [
            f"weighting={weighting}",
            f"seed={seed}",
            f"epochs={self.epochs}",
            "cpu_threads=1",
            "eval.test=true",
        ]
        if self.train_subset is not None:
            sets.append(f"data.train_subset={self.train_subset}")
        return [arg for s in sets for arg in ("--set", s)]

    def run_dir(self, weighting: str, seed: int) -> Path:
        return self.runs / f"{weighting}-s{seed}"


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "seeds": list(plan.seeds),
        "epochs": plan.epochs,
        "train_subset": plan.train_subset,
        "budgets": list(plan.budgets),
        "recipe": "configs/fmnist.yaml",
        "overrides": plan.overrides("WEIGHTING", 0),
    }
