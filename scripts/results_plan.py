"""What scripts/results.py runs: the arms, the seeds and the shared overrides.

The same plan serves the CPU comparison (`make results`: configs/fmnist.yaml, docs/RESULTS.md)
and the paper-scale one on a GPU (scripts/gpu-check.sh: configs/fmnist-rgb-paper.yaml,
docs/RESULTS-gpu.md): only the recipe, the device, the overrides and where the report goes differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WEIGHTINGS = ("l2w", "uniform")
LABELS = {"l2w": "L2W-DEN", "uniform": "uniform"}
COLOURS = {"l2w": "tab:red", "uniform": "tab:blue"}
INIT_ARM = "uniform"  # the arm the initialisation comparison is run on (once, first seed)


@dataclass(frozen=True)
class Plan:
    runs: Path
    seeds: tuple[int, ...]
    epochs: int | None  # None: the recipe's
    train_subset: int | None
    budgets: tuple[float, ...]
    jobs: int
    data_root: str | None
    config: str = "configs/fmnist.yaml"
    device: str | None = None  # None: training as the recipe says, calibration on the CPU
    sets: tuple[str, ...] = ()  # further KEY=VALUE overrides, the same for every run
    # Also train the uniform arm once (first seed) with this model.init, against the recipe's.
    init_arm: str | None = None
    name: str = "RESULTS"  # docs/NAME.md; figures and raw numbers in docs/<name lower-cased>/

    def overrides(self, weighting: str, seed: int) -> list[str]:
        sets = [f"weighting={weighting}", f"seed={seed}"]
        if self.epochs is not None:
            sets.append(f"epochs={self.epochs}")
        sets += ["cpu_threads=1", "eval.test=true"]
        if self.train_subset is not None:
            sets.append(f"data.train_subset={self.train_subset}")
        sets += list(self.sets)
        return [arg for s in sets for arg in ("--set", s)]

    def run_dir(self, weighting: str, seed: int) -> Path:
        return self.runs / f"{weighting}-s{seed}"

    @property
    def init_run(self) -> tuple[str, int, list[str]] | None:
        """(directory name, seed, overrides) of the initialisation run, if the plan has one."""
        if self.init_arm is None:
            return None
        seed = self.seeds[0]
        sets = [*self.overrides(INIT_ARM, seed), "--set", f"model.init={self.init_arm}"]
        return f"{INIT_ARM}-{self.init_arm}-s{seed}", seed, sets

    @property
    def figures_dir(self) -> str:
        return self.name.lower()


def plan_json(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seeds": list(plan.seeds),
        "epochs": plan.epochs,
        "train_subset": plan.train_subset,
        "budgets": list(plan.budgets),
        "recipe": plan.config,
        "device": plan.device,
        "overrides": plan.overrides("WEIGHTING", 0),
    }
    if plan.init_run is not None:
        out["init_run"] = {"name": plan.init_run[0], "overrides": plan.init_run[2]}
    return out
