"""Benchmark: how long calibration takes once the scores exist (solver and evaluation)."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from calibration.build import build_calibration
from calibration.solver import BudgetSolver
from calibration.synthetic import synthetic_scores
from calibration.targets import Target

from .machine import describe_cpu

# The seed's CIFAR-100 MSDNet (5 exits), cumulative MFLOPs per exit.
DEFAULT_EXIT_MFLOPS = (6.86, 14.35, 27.54, 41.71, 58.48)


@dataclass(frozen=True)
class BenchResult:
    images: int
    test_images: int
    exits: int
    budgets: int
    repeat: int
    solve_s: float  # median: a fresh solver (sorts included) solving every budget
    solve_per_budget_ms: float
    full_s: float  # median: solve + 39-point sweep + anytime + evaluation on both splits
    max_relative_gap: float  # largest (target - achieved) / target over the budgets
    exceeded: int  # budgets whose achieved cost is above the target (must be 0)
    machine: str
    python: str
    numpy: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_bench(
    images: int = 50_000,
    exits: int = 5,
    budgets: int = 40,
    test_images: int = 10_000,
    repeat: int = 5,
    seed: int = 0,
) -> BenchResult:
    costs = (
        list(DEFAULT_EXIT_MFLOPS)
        if exits == len(DEFAULT_EXIT_MFLOPS)
        else list(np.cumsum(np.linspace(5.0, 15.0, exits)))
    )
    heldout = synthetic_scores(images, exits, seed=seed)
    test = synthetic_scores(test_images, exits, seed=seed + 1)
    # Evenly spread over the valid range, ends excluded.
    values = np.linspace(costs[0], costs[-1], budgets + 2)[1:-1]
    targets = [Target(name=f"budget-{v:.4f}", mflops=float(v)) for v in values]

    def solve_all() -> list[float]:
        solver = BudgetSolver(heldout.confidence, costs)
        return [solver.solve(t.mflops).achieved_mflops for t in targets]

    achieved = solve_all()
    gaps = [(t.mflops - a) / t.mflops for t, a in zip(targets, achieved, strict=True)]
    solve_s = _median_time(solve_all, repeat)
    full_s = _median_time(
        lambda: build_calibration(
            weights_sha256="0" * 64,
            heldout_sha256="0" * 64,
            exit_mflops=costs,
            heldout=heldout,
            test=test,
            targets=targets,
        ),
        repeat,
    )
    return BenchResult(
        images=images,
        test_images=test_images,
        exits=exits,
        budgets=budgets,
        repeat=repeat,
        solve_s=solve_s,
        solve_per_budget_ms=1000 * solve_s / max(budgets, 1),
        full_s=full_s,
        max_relative_gap=max(gaps) if gaps else 0.0,
        exceeded=sum(g < 0 for g in gaps),
        machine=describe_cpu(),
        python=platform.python_version(),
        numpy=np.__version__,
    )
