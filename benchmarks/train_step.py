"""``exitwise bench train``: the cost of an L2W iteration against a uniform one, side by side.

Same preset, batch, precision and device for every mode; synthetic uint8 batches go through the
trainer's own normalisation and :class:`training.step.TrainStep`, so the figures measure the
training step (two half-batch updates, and the meta step when it fires), not data loading.

Measured, interleaved over several rounds (median of the rounds):

- ``uniform``: the baseline iteration;
- ``l2w, meta step``: an L2W iteration whose meta step fires (meta interval 1);
- ``l2w, no meta step``: an L2W iteration that only runs the WPN forward (the other iterations).

The cost per iteration at meta interval ``I`` is ``((I - 1) * no_meta + meta) / I``: one
iteration in ``I`` runs the meta step.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from exitwise.fileio import atomic_write_text
from exitwise.preprocess import Preprocessing
from training.build import build_model, make_autocast, seed_everything
from training.config import Recipe
from training.data import Normalizer
from training.distributed import DistContext, resolve_device
from training.folder_data import input_preprocessing
from training.meta_learner import MetaLearner
from training.step import TrainStep

from .machine import describe_cpu, sync
from .tables import markdown_table

TARGETS = {1: 1.6, 100: 1.05}  # L2W cost / uniform cost at these meta intervals


@dataclass
class BenchRow:
    weighting: str
    interval: str  # "1", "100", "never", "-"
    ms_per_iteration: float
    images_per_s: float
    ratio: float  # time per image / uniform's
    how: str  # "measured" or "derived"
    target: float | None = None


@dataclass
class BenchResult:
    preset: str
    device: str
    device_name: str
    batch_size: int
    precision: str
    threads: int
    steps: int
    rounds: int
    torch_version: str
    rows: list[BenchRow] = field(default_factory=list)
    raw_ms: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return describe_cpu()


def _make_step(
    recipe: Recipe, preprocessing: Preprocessing, weighting: str, device: torch.device, mode: str
) -> TrainStep:
    seed_everything(recipe.seed)
    classes = [str(i) for i in range(int(_num_classes(recipe)))]
    module = build_model(recipe, preprocessing, classes).to(device)
    if recipe.channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    o = recipe.optim
    optimizer = torch.optim.SGD(
        module.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    )
    meta = None
    if weighting == "l2w":
        spec = recipe.meta.model_copy(update={"gradient": mode})
        meta = MetaLearner.create(spec, module.num_exits, device)
    return TrainStep(
        module,
        module,
        optimizer,
        meta=meta,
        label_smoothing=o.label_smoothing,
        autocast=make_autocast(device, recipe.precision),
        scaler=torch.amp.GradScaler(device.type) if recipe.precision == "fp16" else None,
    )


def _num_classes(recipe: Recipe) -> int:
    from exitwise.models import create_model

    return int(create_model(recipe.model.preset, **recipe.model.kwargs).config_dict["num_classes"])


def run_bench(
    recipe: Recipe,
    *,
    steps: int = 10,
    warmup: int = 2,
    rounds: int = 3,
    double_backward: bool = False,
) -> BenchResult:
    device = resolve_device(recipe.device, DistContext())
    if device.type == "cpu" and recipe.cpu_threads is not None:
        torch.set_num_threads(recipe.cpu_threads)
    preprocessing = input_preprocessing(recipe.data)
    b, c, s = recipe.batch_size, preprocessing.channels, preprocessing.input_size
    gen = torch.Generator().manual_seed(recipe.seed)
    pixels = torch.randint(0, 256, (b, c, s, s), generator=gen, dtype=torch.uint8).to(device)
    labels = torch.randint(0, _num_classes(recipe), (b,), generator=gen).to(device)
    x = Normalizer(preprocessing, device, recipe.channels_last)(pixels)

    uniform = _make_step(recipe, preprocessing, "uniform", device, "forward")
    l2w = _make_step(recipe, preprocessing, "l2w", device, "forward")
    modes: dict[str, tuple[TrainStep, bool]] = {
        "uniform": (uniform, False),
        "l2w_meta": (l2w, True),
        "l2w_no_meta": (l2w, False),
    }
    if double_backward:
        modes["l2w_meta_double_backward"] = (
            _make_step(recipe, preprocessing, "l2w", device, "double-backward"),
            True,
        )

    for step, meta in modes.values():
        for _ in range(warmup):
            step(x, labels, meta)
    raw: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, (step, meta) in modes.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step(x, labels, meta)
            sync(device)
            raw[name].append(1000.0 * (time.perf_counter() - t) / steps)
    ms = {name: statistics.median(v) for name, v in raw.items()}

    result = BenchResult(
        preset=recipe.model.preset,
        device=device.type,
        device_name=_device_name(device),
        batch_size=b,
        precision=recipe.precision,
        threads=torch.get_num_threads(),
        steps=steps,
        rounds=rounds,
        torch_version=torch.__version__,
        raw_ms={k: [round(v, 3) for v in vals] for k, vals in raw.items()},
    )

    def row(weighting: str, interval: str, t: float, how: str, target: float | None) -> BenchRow:
        return BenchRow(weighting, interval, round(t, 2), round(1000.0 * b / t, 1),
                        round(t / ms["uniform"], 3), how, target)  # fmt: skip

    result.rows.append(row("uniform", "-", ms["uniform"], "measured", None))
    result.rows.append(row("l2w", "1", ms["l2w_meta"], "measured", TARGETS[1]))
    t100 = (99 * ms["l2w_no_meta"] + ms["l2w_meta"]) / 100
    result.rows.append(row("l2w", "100", t100, "derived", TARGETS[100]))
    result.rows.append(row("l2w", "never", ms["l2w_no_meta"], "measured", None))
    if double_backward:
        result.rows.append(
            row("l2w (double-backward)", "1", ms["l2w_meta_double_backward"], "measured", None)
        )
    return result


def markdown(result: BenchResult, command: str) -> str:
    """One section: the machine, the command, the table."""
    r = result
    lines = [
        f"### {r.preset} on {r.device} ({r.device_name})",
        "",
        f"Command: `{command}`",
        "",
        f"Batch {r.batch_size} (two halves of {r.batch_size // 2}), {r.precision}, "
        f"{r.threads} intra-op threads, torch {r.torch_version}; synthetic batches (no data "
        f"loading); median of {r.rounds} interleaved rounds of {r.steps} iterations.",
        "",
    ]
    cells = []
    for row in r.rows:
        target = "-"
        if row.target is not None:
            met = "met" if row.ratio <= row.target else "not met"
            target = f"<= {row.target}x ({met})"
        cells.append(
            [
                row.weighting,
                row.interval,
                f"{row.ms_per_iteration:.1f}",
                f"{row.images_per_s:.0f}",
                f"{row.ratio:.2f}x",
                target,
                row.how,
            ]
        )
    header = [
        "weighting", "meta interval", "ms / iteration", "images/s",
        "time per image vs uniform", "target", "how",
    ]  # fmt: skip
    lines.append(markdown_table(header, cells))
    lines += [
        "",
        "Interval 100 is derived from the two measured L2W iterations: "
        "(99 x no-meta + 1 x meta) / 100.",
    ]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str, key: str) -> None:
    """Replace the section tagged ``key`` in ``path`` (or add it), keeping the others."""
    begin, end = f"<!-- bench-train:{key} -->", f"<!-- /bench-train:{key} -->"
    block = f"{begin}\n{section}{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        if not text:
            text = (
                "# Training step benchmark: L2W-DEN against uniform weighting\n\n"
                "Written by `exitwise bench train --markdown docs/benchmarks/train.md`; each "
                "section is one machine, preset and setting. See docs/training.md for what "
                "the figures mean.\n\n"
            )
        text = text.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, text)


def section_key(result: BenchResult) -> str:
    key = f"{result.device}:{result.preset}:b{result.batch_size}:{result.precision}"
    return key + (f":t{result.threads}" if result.device == "cpu" else "")
