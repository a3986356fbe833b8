#!/usr/bin/env python3
"""L2W-DEN against uniform weighting on Fashion-MNIST: train, calibrate, report.

    python scripts/results.py run      # train + calibrate every (weighting, seed) run; resumable
    python scripts/results.py report   # docs/RESULTS.md, docs/results/ (curves.png, results.json)
    make results                        # both

The paper-scale comparison on a GPU (scripts/gpu-check.sh runs it, docs/gpu-check.md):

    python scripts/results.py all --config configs/fmnist-rgb-paper.yaml --device cuda \
        --runs runs/results-gpu --name RESULTS-gpu --jobs 7 --epochs 30 --init-arm he \
        --budgets 10,15,20,30

Every run uses the product's own commands (`exitwise train`, `exitwise calibrate`) with the
`fmnist` recipe and the same overrides, so L2W and uniform differ only in `weighting`. The held-out
split depends on `data.split_seed` only, so every run calibrates on the same 5,000 images and is
measured on the same 10,000 test images.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from results_plan import REPO, WEIGHTINGS, Plan, plan_json

from exitwise.fileio import atomic_write_json


def _exitwise() -> list[str]:
    return [sys.executable, "-m", "cli"]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}); see {log}")


def train_and_calibrate(plan: Plan, name: str, overrides: list[str]) -> None:
    out = plan.runs / name
    log = plan.runs / f"{name}.log"
    data = ["--data-root", plan.data_root] if plan.data_root else []
    if not (out / "manifest.json").exists():
        resume = (out / "checkpoints" / "last.pt").exists()
        _log(f"{'resuming' if resume else 'training'} {name}")
        device = ["--device", plan.device] if plan.device else []  # else: the recipe's
        cmd = [*_exitwise(), "train", "--out", str(out), *device, *data]
        cmd += ["--resume"] if resume else ["--config", plan.config, "--overwrite"]
        cmd += overrides
        _run(cmd, log)
    if not (out / "calibration.json").exists():
        _log(f"calibrating {name}")
        budgets = ",".join(f"{b:g}" for b in plan.budgets)
        device = ["--device", plan.device or "cpu"]
        cmd = [*_exitwise(), "calibrate", str(out), "--budgets", budgets, *device]
        _run(cmd + data, log)
    _log(f"done {name}")


def run(plan: Plan) -> None:
    plan.runs.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.runs / "plan.json", plan_json(plan))
    # Longest first (L2W costs several uniform runs), so the pool ends together.
    jobs = [(plan.run_dir(w, s).name, plan.overrides(w, s)) for w in WEIGHTINGS for s in plan.seeds]
    if plan.init_run is not None:
        jobs.append((plan.init_run[0], plan.init_run[2]))
    with ThreadPoolExecutor(plan.jobs) as pool:
        for fut in [pool.submit(train_and_calibrate, plan, n, o) for n, o in jobs]:
            fut.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "report", "all"])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "results")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--budgets", default="3,5,8")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--config", default="configs/fmnist.yaml", help="the recipe of every run")
    parser.add_argument(
        "--device",
        default=None,
        help="train and calibrate on cpu or cuda (default: training "
        "as the recipe says, calibration on the CPU)",
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="KEY=VALUE for every run"
    )
    parser.add_argument(
        "--init-arm", default=None, help="also train uniform once (first seed) with this model.init"
    )
    parser.add_argument("--name", default="RESULTS", help="docs/NAME.md and docs/<name>/")
    args = parser.parse_args()
    plan = Plan(
        runs=args.runs,
        seeds=tuple(int(s) for s in args.seeds.split(",")),
        epochs=args.epochs,
        train_subset=args.train_subset,
        budgets=tuple(float(b) for b in args.budgets.split(",")),
        jobs=args.jobs,
        data_root=args.data_root,
        config=args.config,
        device=args.device,
        sets=tuple(args.sets),
        init_arm=args.init_arm,
        name=args.name,
    )
    if args.action in ("run", "all"):
        run(plan)
    if args.action in ("report", "all"):
        from results_report import report

        report(plan, args.docs)


if __name__ == "__main__":
    main()
