#!/usr/bin/env python3
"""The Python half of scripts/gpu-check.sh: what the shell cannot say in one line.

    python scripts/gpu_check.py missing WHEELDIR        wheels whose distribution is not installed
    python scripts/gpu_check.py env OUT.json            GPU, driver, torch, CUDA, onnxruntime, CPU
    python scripts/gpu_check.py fit --solo T.json [--probe P.json ...] --box S --runs N \
        --config C [--set KEY=VALUE ...] --out FIT.json  epochs of the comparison that fit S s
    python scripts/gpu_check.py summary DIR             DIR/summary.md from what the parts wrote

Nothing here imports the project at module level, so ``missing`` and ``env`` work before the
project's dependencies are installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# What a comparison run costs besides its iterations, and what follows the runs (the fit keeps
# this much of the box free). Starting a run (imports, CUDA, the data set onto the GPU, FLOPs)
# took 10-15 s per process on the CPU here; the held-out and test evaluation is 15,000 forward
# passes. Calibration reads 15,000 images per run again and the report draws one figure.
RUN_OVERHEAD_S = 35.0
AFTER_RUNS_S = 45.0
FASHION_MNIST_TRAIN = 60000


def missing(wheeldir: Path) -> list[Path]:
    """Wheels in ``wheeldir`` whose distribution this interpreter lacks, or has in an older
    version (the carried ones are the versions this project runs; a newer one already there is
    kept). Installed into a folder ahead of the interpreter's own on PYTHONPATH, nothing of the
    machine's is changed."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # then only what is absent
        Version = None  # type: ignore[assignment,misc]  # noqa: N806
    out = []
    for wheel in sorted(wheeldir.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(wheel)
            continue
        if Version is not None:
            try:
                if Version(have) < Version(version):
                    out.append(wheel)
            except InvalidVersion:
                pass
    return out


def _run(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "none"


def environment() -> dict[str, Any]:
    import platform

    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "has_cuda": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "cpu": _run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip(),
    }
    if env["has_cuda"]:
        props = torch.cuda.get_device_properties(0)
        env |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
        }
    smi = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    )
    env["nvidia_smi"] = smi or None
    env["driver"] = smi.split(",")[1].strip() if smi.count(",") >= 2 else None
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"], env["onnxruntime_providers"] = None, []
    # onnxruntime's CUDA provider, usable: installed (onnxruntime-gpu) and a GPU to run on.
    env["onnx_cuda"] = env["has_cuda"] and "CUDAExecutionProvider" in env["onnxruntime_providers"]
    try:  # what every part needs: the project and its serving stack
        import calibration  # noqa: F401
        import cli  # noqa: F401
        import exports  # noqa: F401
        import serving.app  # noqa: F401
        import training.trainer  # noqa: F401

        env["project_import"] = "ok"
    except ImportError as err:
        env["project_import"] = f"failed: {err}"
    env["slug"] = slug(env.get("gpu", "none"))
    return env


@dataclass(frozen=True)
class Sizes:
    """What the fit needs of a recipe (read without importing the project: no torch start-up;
    the run itself validates the recipe)."""

    epochs: int
    batch_size: int
    train_subset: int | None
    heldout_size: int


def read_recipe(path: str, sets: list[str]) -> Sizes:
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    for item in sets:
        key, _, raw = item.partition("=")
        *parents, last = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(raw)
    d = data.get("data", {})
    return Sizes(
        epochs=int(data["epochs"]),
        batch_size=int(data["batch_size"]),
        train_subset=d.get("train_subset"),
        heldout_size=int(d.get("heldout_size") or 5000),
    )


def _ms(result: dict[str, Any], mode: str) -> float:
    return float(statistics.median(result["raw_ms"][mode]))


def fit(
    solo: dict[str, Any], probes: list[dict[str, Any]], box_s: float, recipe: Sizes, runs: int
) -> dict[str, Any]:
    """The most epochs of ``recipe`` whose L2W runs, ``runs`` processes sharing the GPU, end
    inside ``box_s`` seconds with calibration and the report after them.

    The time of an iteration under sharing comes from ``probes``: ``bench train`` run by as many
    processes at once as the comparison has runs (each one's L2W iteration time over the solo
    one is its slowdown). Without probes the runs are taken to share the GPU serially (slowdown =
    number of runs), the slowest it can be. The uniform runs end first and the L2W runs then go
    faster; that is not counted, so the estimate errs on the short side.
    """
    solo_l2w, solo_uni = _ms(solo, "l2w_meta"), _ms(solo, "uniform")
    if probes:
        slowdown = statistics.median(_ms(p, "l2w_meta") / solo_l2w for p in probes)
    else:
        slowdown = float(runs)
    n_train = recipe.train_subset or FASHION_MNIST_TRAIN - recipe.heldout_size
    iterations = n_train // recipe.batch_size
    epoch_s = iterations * solo_l2w * slowdown / 1000.0
    available = box_s - RUN_OVERHEAD_S - AFTER_RUNS_S
    epochs = max(1, min(recipe.epochs, math.floor(available / epoch_s) if epoch_s > 0 else 1))
    return {
        "epochs": epochs,
        "recipe_epochs": recipe.epochs,
        "box_s": box_s,
        "runs": runs,
        "train_images": n_train,
        "iterations_per_epoch": iterations,
        "solo_ms": {"uniform": solo_uni, "l2w_meta": solo_l2w},
        "slowdown_l2w": round(slowdown, 3),
        "probes": len(probes),
        "l2w_epoch_s_shared": round(epoch_s, 2),
        "estimated_l2w_run_s": round(RUN_OVERHEAD_S + epochs * epoch_s, 1),
        "estimated_total_s": round(RUN_OVERHEAD_S + epochs * epoch_s + AFTER_RUNS_S, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("missing").add_argument("wheeldir", type=Path)
    sub.add_parser("env").add_argument("out", type=Path)
    f = sub.add_parser("fit")
    f.add_argument("--solo", type=Path, required=True)
    f.add_argument("--probe", type=Path, action="append", default=[])
    f.add_argument("--box", type=float, required=True)
    f.add_argument("--runs", type=int, required=True)
    f.add_argument("--config", required=True)
    f.add_argument("--set", dest="sets", action="append", default=[])
    f.add_argument("--out", type=Path, required=True)
    sub.add_parser("summary").add_argument("dir", type=Path)
    args = parser.parse_args()

    if args.cmd == "missing":
        print("\n".join(str(w) for w in missing(args.wheeldir)))
    elif args.cmd == "env":
        env = environment()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(env, indent=2) + "\n")
        for key, value in env.items():
            print(f"{key}={value}")
    elif args.cmd == "fit":
        recipe = read_recipe(args.config, args.sets)
        probes = [json.loads(p.read_text()) for p in args.probe if p.is_file() and p.stat().st_size]
        plan = fit(json.loads(args.solo.read_text()), probes, args.box, recipe, args.runs)
        args.out.write_text(json.dumps(plan, indent=2) + "\n")
        print(plan["epochs"])
    else:
        from gpu_summary import write_summary

        sys.stdout.write(write_summary(args.dir))


if __name__ == "__main__":
    main()
