"""The report half of scripts/results.py: docs/RESULTS.md, docs/results/curves.png and
docs/results/results.json from the runs' bundles (manifest.json + calibration.json); for the GPU
comparison docs/RESULTS-gpu.md and docs/results-gpu/. The setup it describes is read from the
runs' own resolved recipes, so the text is true for whatever recipe the plan named."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from results_plan import COLOURS, LABELS, REPO, WEIGHTINGS, Plan, plan_json
from results_setup import data_label, init_lines, setup_lines, title

from exitwise.fileio import atomic_path, atomic_write_text


@dataclass
class RunResult:
    weighting: str
    seed: int
    exit_mflops: list[float]
    anytime_test: list[float]
    sweep_mflops: np.ndarray  # test split, per q
    sweep_acc: np.ndarray
    budgets: dict[float, tuple[float, float, float]]  # target -> (test acc, test MFLOPs, held-out)
    train_time_s: float
    recipe: dict[str, Any]  # the resolved recipe the run trained with
    device: str
    train_images: int
    heldout_images: int  # what calibration ran on
    test_images: int


def load_run(path: Path, weighting: str, seed: int) -> RunResult:
    manifest = json.loads((path / "manifest.json").read_text())
    cal = json.loads((path / "calibration.json").read_text())
    sweep = sorted(cal["sweep"], key=lambda p: p["test_mflops"])
    budgets = {
        float(p["target_mflops"]): (
            p["test"]["accuracy"],
            p["test"]["mflops"],
            p["heldout"]["mflops"],
        )
        for p in cal["operating_points"]
        if p.get("target_mflops") is not None
    }
    return RunResult(
        weighting=weighting,
        seed=seed,
        exit_mflops=[e["mflops"] for e in manifest["exits"]],
        anytime_test=[a["test_top1"] for a in cal["anytime"]],
        sweep_mflops=np.array([p["test_mflops"] for p in sweep]),
        sweep_acc=np.array([p["test_accuracy"] for p in sweep]),
        budgets=budgets,
        train_time_s=float(manifest["training"].get("train_time_s", float("nan"))),
        recipe=manifest["training"]["recipe"],
        device=str(manifest["training"].get("device", "cpu")),
        train_images=int(manifest["training"].get("train_images", 0)),
        heldout_images=int(cal["operating_points"][0]["heldout"]["images"]),
        test_images=int(cal["operating_points"][0]["test"]["images"]),
    )


def _interp(run: RunResult, grid: np.ndarray) -> np.ndarray:
    # The sweep's cost is non-decreasing in q; keep the best accuracy per cost for interpolation.
    x, idx = np.unique(run.sweep_mflops, return_index=True)
    y = np.maximum.reduceat(run.sweep_acc, idx) if len(idx) else run.sweep_acc
    out: np.ndarray = np.interp(grid, x, y)
    return out


def _ms(values: list[float] | np.ndarray) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _std0(rows: np.ndarray) -> np.ndarray:
    """Sample standard deviation over seeds (axis 0); zeros for a single seed."""
    out: np.ndarray = rows.std(0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1:])
    return out


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def plan_args(plan: Plan) -> list[str]:
    """The options of scripts/results.py that give ``plan`` (for the report's first line)."""
    args = ["--config", plan.config, "--runs", _rel(plan.runs)]
    args += ["--device", plan.device] if plan.device else []
    args += ["--name", plan.name, "--seeds", ",".join(map(str, plan.seeds))]
    args += ["--budgets", ",".join(f"{b:g}" for b in plan.budgets), "--jobs", str(plan.jobs)]
    args += ["--epochs", str(plan.epochs)] if plan.epochs is not None else []
    args += ["--train-subset", str(plan.train_subset)] if plan.train_subset else []
    args += ["--init-arm", plan.init_arm] if plan.init_arm else []
    return args + [a for s in plan.sets for a in ("--set", s)]


def _init_run(plan: Plan) -> tuple[str, RunResult] | None:
    if plan.init_run is None:
        return None
    name, seed, _ = plan.init_run
    if not (plan.runs / name / "calibration.json").is_file():
        return None
    return name, load_run(plan.runs / name, "uniform", seed)


def report(plan: Plan, docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {w: [load_run(plan.run_dir(w, s), w, s) for s in plan.seeds] for w in WEIGHTINGS}
    fig = plan.figures_dir
    out_dir = docs / fig
    out_dir.mkdir(parents=True, exist_ok=True)
    exit_mflops = results["l2w"][0].exit_mflops
    recipe = results["l2w"][0].recipe
    k = len(exit_mflops)

    # Common MFLOPs grid inside every run's dynamic range.
    lo = max(float(r.sweep_mflops.min()) for rs in results.values() for r in rs)
    hi = min(float(r.sweep_mflops.max()) for rs in results.values() for r in rs)
    grid = np.linspace(lo, hi, 60)
    curves = {w: np.stack([_interp(r, grid) for r in rs]) for w, rs in results.items()}

    figure, ax = plt.subplots(figsize=(7, 4.5))
    for w, rs in results.items():
        for r in rs:
            ax.plot(r.sweep_mflops, r.sweep_acc, color=COLOURS[w], alpha=0.25, lw=0.8)
        mean, std = curves[w].mean(0), _std0(curves[w])
        ax.plot(
            grid, mean, color=COLOURS[w], lw=2, label=f"{LABELS[w]} dynamic (mean of {len(rs)})"
        )
        ax.fill_between(grid, mean - std, mean + std, color=COLOURS[w], alpha=0.15)
        anytime = np.array([r.anytime_test for r in rs])
        ax.errorbar(
            exit_mflops,
            anytime.mean(0),
            yerr=_std0(anytime),
            fmt="o",
            color=COLOURS[w],
            ms=4,
            capsize=3,
            label=f"{LABELS[w]} anytime (exits)",
        )
    for b in plan.budgets:
        ax.axvline(b, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("mean MFLOPs (multiply-adds) per image, test split")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{title(recipe)}: L2W-DEN vs uniform weighting")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    with atomic_path(out_dir / "curves.png") as tmp:
        figure.savefig(tmp, dpi=130, format="png")
    plt.close(figure)

    lines: list[str] = []
    add = lines.append
    add(f"# Results: L2W-DEN against uniform weighting on {data_label(recipe)}")
    add("")
    if plan.name == "RESULTS":
        how = (
            "`python scripts/results.py run && python scripts/results.py report` "
            "(or `make results`)"
        )
    else:
        how = f"`python scripts/results.py all {shlex.join(plan_args(plan))}`"
    add(
        f"Generated by {how}; every figure below comes from the files in `{_rel(plan.runs)}/` "
        f"that those commands write. Raw numbers: [{fig}/results.json]({fig}/results.json)."
    )
    add("")
    add("## Setup")
    add("")
    lines += setup_lines(plan, results, exit_mflops)
    add("")
    add("Values are mean ± sample standard deviation over seeds.")
    add("")

    add("## Anytime accuracy per exit (test top-1 %)")
    add("")
    add("| exit | MFLOPs | L2W-DEN | uniform | L2W − uniform |")
    add("|---|---|---|---|---|")
    any_rows = {}
    for j in range(k):
        l2w = [r.anytime_test[j] for r in results["l2w"]]
        uni = [r.anytime_test[j] for r in results["uniform"]]
        diff = _ms(np.array(l2w) - np.array(uni))
        any_rows[j + 1] = {"l2w": _ms(l2w), "uniform": _ms(uni), "diff": diff}
        add(
            f"| {j + 1} | {exit_mflops[j]:.2f} | {_fmt(*_ms(l2w))} | {_fmt(*_ms(uni))} | "
            f"{diff[0]:+.2f} ± {diff[1]:.2f} |"
        )
    add("")

    add("## Accuracy at fixed budgets (calibrated on held-out, measured on test)")
    add("")
    add(
        "| budget (MFLOPs) | L2W-DEN acc % | L2W test MFLOPs | uniform acc % | uniform test MFLOPs "
        "| L2W − uniform |"
    )
    add("|---|---|---|---|---|---|")
    budget_rows = {}
    for b in plan.budgets:
        at_l2w = [r.budgets[b] for r in results["l2w"]]
        at_uni = [r.budgets[b] for r in results["uniform"]]
        diff = _ms(np.array([x[0] for x in at_l2w]) - np.array([x[0] for x in at_uni]))
        budget_rows[b] = {
            "l2w_acc": _ms([x[0] for x in at_l2w]),
            "l2w_mflops": _ms([x[1] for x in at_l2w]),
            "uniform_acc": _ms([x[0] for x in at_uni]),
            "uniform_mflops": _ms([x[1] for x in at_uni]),
            "diff": diff,
        }
        add(
            f"| {b:g} | {_fmt(*budget_rows[b]['l2w_acc'])} | {budget_rows[b]['l2w_mflops'][0]:.2f} "
            f"| {_fmt(*budget_rows[b]['uniform_acc'])} | {budget_rows[b]['uniform_mflops'][0]:.2f} "
            f"| {diff[0]:+.2f} ± {diff[1]:.2f} |"
        )
    add("")

    add("## Dynamic accuracy against cost")
    add("")
    add(f"![L2W-DEN vs uniform: test accuracy against mean MFLOPs]({fig}/curves.png)")
    add("")
    add(
        "Thin lines: each seed's 39-point sweep; thick lines and bands: mean ± std after "
        "interpolating every seed's curve on a common MFLOPs grid; dots: anytime accuracy of each "
        "exit; dotted lines: the three budgets."
    )
    add("")
    add("| mean MFLOPs | L2W-DEN % | uniform % | L2W − uniform |")
    add("|---|---|---|---|")
    sample = np.linspace(lo, hi, 6)
    sampled = []
    for x in sample:
        i = int(np.argmin(np.abs(grid - x)))
        col_l2w, col_uni = curves["l2w"][:, i], curves["uniform"][:, i]
        diff = _ms(col_l2w - col_uni)
        sampled.append(
            {"mflops": float(grid[i]), "l2w": _ms(col_l2w), "uniform": _ms(col_uni), "diff": diff}
        )
        add(
            f"| {grid[i]:.2f} | {_fmt(*_ms(col_l2w))} | {_fmt(*_ms(col_uni))} | "
            f"{diff[0]:+.2f} ± {diff[1]:.2f} |"
        )
    add("")

    # Cost at which each method's mean curve first reaches a common accuracy: 0.1 points below the
    # lower of the two plateaus, so that both reach it and seed noise on the plateau does not
    # decide which one "got there first".
    mean_l2w, mean_uni = curves["l2w"].mean(0), curves["uniform"].mean(0)
    level = min(float(mean_l2w.max()), float(mean_uni.max())) - 0.1
    cost_l2w = float(grid[int(np.argmax(mean_l2w >= level))])
    cost_uni = float(grid[int(np.argmax(mean_uni >= level))])

    add("## Reading")
    add("")
    d_budgets = [budget_rows[b]["diff"] for b in plan.budgets]
    add(
        f"- At the budgets {', '.join(f'{b:g}' for b in plan.budgets)} MFLOPs L2W-DEN is "
        f"{', '.join(f'{d[0]:+.2f}' for d in d_budgets)} points against uniform weighting "
        "(mean of the per-seed differences)."
    )
    clear = [
        f"{b:g} MFLOPs ({d[0]:+.2f} ± {d[1]:.2f})"
        for b, d in zip(plan.budgets, d_budgets, strict=True)
        if abs(d[0]) > d[1]
    ]
    add(
        "- Differences larger than their spread over seeds: "
        + (", ".join(clear) if clear else "none")
        + "."
    )
    add(
        f"- To reach {level:.2f} % (0.1 points below the lower of the two best mean accuracies), "
        f"L2W-DEN needs {cost_l2w:.2f} MFLOPs per image and uniform {cost_uni:.2f} "
        f"({cost_uni / cost_l2w:.2f}x the cost of L2W-DEN)."
    )
    add(
        "- Anytime accuracy: L2W-DEN is "
        + ", ".join(f"{any_rows[j]['diff'][0]:+.2f}" for j in sorted(any_rows))
        + " points against uniform at exits "
        + ", ".join(str(j) for j in sorted(any_rows))
        + " (every image runs to that exit)."
    )
    where = "CPU" if results["l2w"][0].device == "cpu" else "GPU"
    add(
        "- The paper reports about +1 point at equal cost, or 1.6-2x fewer MFLOPs at equal "
        f"accuracy, on CIFAR and ImageNet after 300/100 epochs; this is a {recipe['epochs']}-epoch "
        f"{where} run on a much easier data set, where every exit is already close to the last one."
    )
    add("")
    init = _init_run(plan)
    if init is not None:
        lines += init_lines(init[0], init[1], results["uniform"][0], plan.budgets)
    atomic_write_text(docs / f"{plan.name}.md", "\n".join(lines) + "\n")

    raw = {
        "plan": plan_json(plan),
        "exit_mflops": exit_mflops,
        "runs": [
            {
                "weighting": r.weighting,
                "seed": r.seed,
                "init": r.recipe["model"].get("init", "he"),
                "anytime_test": r.anytime_test,
                "budgets": {f"{b:g}": list(v) for b, v in r.budgets.items()},
                "sweep": {"mflops": r.sweep_mflops.tolist(), "accuracy": r.sweep_acc.tolist()},
                "train_time_s": r.train_time_s,
            }
            for rs in [*results.values(), [init[1]] if init is not None else []]
            for r in rs
        ],
        "anytime": {str(j): v for j, v in any_rows.items()},
        "budgets": {f"{b:g}": v for b, v in budget_rows.items()},
        "curve_samples": sampled,
    }
    atomic_write_text(out_dir / "results.json", json.dumps(raw, indent=2) + "\n")
    print(
        f"wrote {docs / (plan.name + '.md')}, {out_dir / 'curves.png'}, {out_dir / 'results.json'}"
    )
