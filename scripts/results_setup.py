"""The words of a results report that depend on the recipe: its title, the setup section and the
initialisation comparison, read from the runs' own resolved recipes (manifest.json), so that the
CPU report (configs/fmnist.yaml) and the GPU one (configs/fmnist-rgb-paper.yaml) are both true."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from results_plan import Plan

DATASETS = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


class Run(Protocol):
    recipe: dict[str, Any]
    device: str
    train_images: int
    heldout_images: int
    test_images: int
    train_time_s: float
    anytime_test: list[float]
    budgets: dict[float, tuple[float, float, float]]


def data_label(recipe: dict[str, Any]) -> str:
    data = recipe["data"]
    name = DATASETS.get(data["dataset"], str(data["dataset"]))
    return name + (" (3 channels)" if data.get("channels") == 3 else "")


def title(recipe: dict[str, Any]) -> str:
    return f"{data_label(recipe)}, {recipe['model']['preset']}"


def machine(device: str) -> str:
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _mean_std(values: Sequence[float]) -> str:
    import numpy as np

    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return f"{float(arr.mean()):.2f} ± {std:.2f}"


def setup_lines(
    plan: Plan, runs: Mapping[str, Sequence[Run]], exit_mflops: Sequence[float]
) -> list[str]:
    first = runs["l2w"][0]
    r = first.recipe
    model, data, optim, meta = r["model"], r["data"], r["optim"], r["meta"]
    batch = int(r["batch_size"])
    kwargs = ", ".join(f"{k}={v}" for k, v in model.get("kwargs", {}).items())
    init = model.get("init", "he")
    init_words = {
        "he": "He-normal everywhere (`he`)",
        "original": "the originals' effective one (`original`: PyTorch's defaults where their "
        "init loop never reached)",
    }.get(init, f"`{init}`")
    lines = [
        f"- Model: preset `{model['preset']}`"
        + (f" with `{kwargs}`" if kwargs else "")
        + f" ({len(exit_mflops)} exits, {', '.join(f'{m:.2f}' for m in exit_mflops)} MFLOPs "
        f"cumulative); initialisation: {init_words}.",
    ]
    epochs = int(r["epochs"])
    what = f"`{plan.config}`"
    if plan.sets or plan.epochs is not None:
        what += f" with `--set epochs={epochs}`" if plan.epochs is not None else ""
        what += "".join(f" `--set {s}`" for s in plan.sets)
    aug = "pad-to-32 + random crop + flip" if data["dataset"] == "fashion-mnist" else "crop + flip"
    channels = (
        ", the grey channel replicated into 3 (`data.channels: 3`)"
        if data.get("channels") == 3
        else ""
    )
    lines.append(
        f"- Recipe: {what}: {data_label(r)}{channels}, {first.train_images:,} training images, "
        f"{epochs} epoch{'s' if epochs != 1 else ''}, batch {batch} split into two halves of "
        f"{batch // 2}, SGD momentum "
        f"{optim['momentum']:g}, lr {optim['lr']:g} {optim['schedule']}, weight decay "
        f"{optim['weight_decay']:g}, {r.get('precision', 'fp32')}, augmentation {aug}. "
        f"L2W: WPN on per-exit {meta['input']}, {meta['num_layers']} hidden layer(s) of "
        f"{meta['hidden_size']}, `{meta['norm']}` normalisation, epsilon {meta['epsilon']:g}, "
        f"target q = {meta['target_p_index'] / 20:g}, meta step every "
        + ("iteration" if meta["interval"] == 1 else f"{meta['interval']} iterations")
        + (" (the seed's CIFAR settings)." if meta["interval"] == 1 else ".")
    )
    lines.append(
        f"- The only difference between the two arms is `--set weighting=l2w|uniform`; seeds "
        f"{', '.join(str(s) for s in plan.seeds)} for both."
    )
    lines.append(
        f"- Calibration: `exitwise calibrate` on the {first.heldout_images:,}-image held-out split "
        "(never trained on, never augmented; the same split for every run); every accuracy below "
        f"is measured on the {first.test_images:,} test images with those thresholds. "
        "Dynamic curves: the seed's 39-point q sweep."
    )
    threads = ", one thread each" if first.device == "cpu" else ", concurrently on the one GPU"
    lines.append(
        f"- Epochs: {epochs} (the paper trains CIFAR for 300); {plan.jobs} runs at a time{threads}."
    )
    times = {w: _mean_std([x.train_time_s / 60 for x in rs]) for w, rs in runs.items()}
    lines.append(
        f"- Training time per run (minutes): L2W {times['l2w']}, uniform {times['uniform']} "
        f"({machine(first.device)})."
    )
    return lines


def init_lines(name: str, he: Run, base: Run, budgets: Sequence[float]) -> list[str]:
    """The one-seed comparison of two initialisations on the uniform arm."""
    a, b = base.recipe["model"].get("init", "he"), he.recipe["model"].get("init", "he")
    lines = [
        "## Initialisation on the uniform arm (one seed)",
        "",
        f"The uniform arm of seed {base.recipe['seed']} trained once more with "
        f"`--set model.init={b}` (run `{name}`), everything else equal; one seed, so differences "
        "under the seed spread above are noise.",
        "",
        f"| | `{a}` | `{b}` | `{b}` − `{a}` |",
        "|---|---|---|---|",
    ]
    for j, (x, y) in enumerate(zip(base.anytime_test, he.anytime_test, strict=True)):
        lines.append(f"| exit {j + 1}, anytime % | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
    for bud in budgets:
        if bud in base.budgets and bud in he.budgets:
            x, y = base.budgets[bud][0], he.budgets[bud][0]
            lines.append(f"| {bud:g} MFLOPs, dynamic % | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
    lines.append("")
    return lines
