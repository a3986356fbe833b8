"""Benchmark: early-exit inference with PyTorch eager vs the onnxruntime stage graphs.

Both backends run the same loop over the same images, batch by batch: run a stage, apply the
exit rule (:func:`exitwise.policy.stops_here`) with one operating point's thresholds, drop the
exited rows (:func:`exitwise.models.select_rows`), run the next stage. Timings alternate between
the backends, repeat by repeat, and the best repeat is kept. No HTTP, no queue, no batching
across requests: this measures what each backend costs the server's engine, not the server.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.bundle import Bundle
from exitwise.machine import describe_cpu
from exitwise.models import EarlyExitNet, State, select_rows
from exitwise.policy import confidence_and_prediction, stops_here
from exitwise.preprocess import normalize
from exitwise.runtime import StageRunner

from .parity import load_parity_images
from .runtime import load_onnx_runner
from .sessions import ort_version

LAST_EXIT = "last exit"
_SOURCES = {"heldout": "held-out", "random": "random"}


class TorchRunner:
    """The bundle's PyTorch model, eager, as a :class:`~exitwise.runtime.StageRunner`."""

    backend = "torch"

    def __init__(self, model: EarlyExitNet, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.provider = f"torch-{device.type}"
        self.num_exits = model.num_exits

    def initial_state(self, images: Tensor) -> State:
        return self.model.initial_state(images.to(self.device))

    def run_stage(self, index: int, state: State) -> tuple[State, Tensor]:
        with torch.no_grad():
            return self.model.run_stage(index, state)


def early_exit(runner: StageRunner, images: Tensor, thresholds: list[float]) -> Tensor:
    """Exit index (0-based, on the CPU) of each image, running only the stages it needs."""
    n, k = len(images), runner.num_exits
    exits = torch.full((n,), k - 1, dtype=torch.int64)
    rows = torch.arange(n, device=runner.device)
    state = runner.initial_state(images)
    for index in range(k):
        state, logits = runner.run_stage(index, state)
        if index == k - 1:
            break
        conf, _ = confidence_and_prediction(logits)
        stop = stops_here(conf, thresholds[index], index, k)
        exits[rows[stop].cpu()] = index
        keep = torch.nonzero(~stop).squeeze(1)
        if len(keep) == 0:
            break
        state = select_rows(state, keep)
        rows = rows[keep]
    return exits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(runner: StageRunner, x: Tensor, batch: int, thresholds: list[float]) -> float:
    """Seconds to run all of ``x`` in batches of ``batch``."""
    _sync(runner.device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        early_exit(runner, x[i : i + batch], thresholds)
    _sync(runner.device)
    return time.perf_counter() - start


@dataclass
class Timing:
    seconds: float  # the best repeat, all images
    batches: int
    images: int

    @property
    def ms_per_batch(self) -> float:
        return 1000 * self.seconds / self.batches

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


@dataclass
class Row:
    batch_size: int
    point: str
    mflops: float  # realised mean MFLOPs per image (from the exits taken)
    exit_fractions: list[float]
    same_exit: float  # share of images both backends send to the same exit
    torch: Timing
    onnx: Timing

    @property
    def speedup(self) -> float:
        return self.torch.seconds / self.onnx.seconds


@dataclass
class Report:
    bundle: str
    arch: str
    num_exits: int
    images: int
    image_source: str
    device: str
    provider: str
    threads: int
    repeats: int
    fp16: bool
    machine: dict[str, str]
    rows: list[Row] = field(default_factory=list)


def operating_points(bundle: Bundle) -> list[tuple[str, list[float]]]:
    """Each calibrated operating point's thresholds, then "last exit" (every image runs all)."""
    k = bundle.manifest.num_exits
    points = []
    if bundle.has_calibration:
        for p in bundle.calibration().operating_points:
            points.append((p.name, [float(t) for t in p.threshold_array()]))
    points.append((LAST_EXIT, [float("inf")] * (k - 1) + [float("-inf")]))
    return points


def machine_info(device: torch.device) -> dict[str, str]:
    info = {
        "cpu": describe_cpu(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench_backends(
    bundle: Bundle,
    *,
    batch_sizes: list[int],
    images: int = 512,
    device: str = "auto",
    threads: int | None = None,
    repeats: int = 3,
    data_root: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    say = progress or (lambda _: None)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    onnx = load_onnx_runner(bundle, device, intra_op_threads=threads)
    runners: dict[str, Any] = {
        "torch": TorchRunner(bundle.load_model(), onnx.device),
        "onnx": onnx,
    }
    pixels = load_parity_images(bundle, images, data_root, note=say)
    x = normalize(pixels.pixels, bundle.manifest.preprocessing)
    mflops = np.asarray(bundle.manifest.exit_mflops)
    k = bundle.manifest.num_exits
    report = Report(
        bundle=bundle.name,
        arch=bundle.manifest.preset or bundle.manifest.arch,
        num_exits=k,
        images=len(x),
        image_source=pixels.source,
        device=str(onnx.device),
        provider=onnx.provider,
        threads=threads,
        repeats=repeats,
        fp16=onnx.fp16,
        machine=machine_info(onnx.device),
    )
    for batch in batch_sizes:
        n_batches = -(-len(x) // batch)
        for name, thresholds in operating_points(bundle):
            say(f"batch {batch}, {name}")
            exits = {
                b: torch.cat(
                    [early_exit(r, x[i : i + batch], thresholds) for i in range(0, len(x), batch)]
                )
                for b, r in runners.items()
            }  # also the warm-up
            best = {b: float("inf") for b in runners}
            for _ in range(repeats):
                for b, r in runners.items():
                    best[b] = min(best[b], time_loop(r, x, batch, thresholds))
            e = exits["torch"].numpy()
            report.rows.append(
                Row(
                    batch_size=batch,
                    point=name,
                    mflops=float(mflops[e].mean()),
                    exit_fractions=[float((e == j).mean()) for j in range(k)],
                    same_exit=float((exits["torch"] == exits["onnx"]).double().mean()),
                    torch=Timing(best["torch"], n_batches, len(x)),
                    onnx=Timing(best["onnx"], n_batches, len(x)),
                )
            )
    return report


def to_markdown(report: Report, command: str) -> str:
    m = report.machine
    lines = [
        f"## `{report.bundle}` ({report.arch}, {report.num_exits} exits)"
        f"{', fp16 graphs' if report.fp16 else ''} on {m.get('gpu', m['cpu'])}",
        "",
        f"Command: `{command}`",
        "",
        f"- Machine: {m['cpu']}" + (f", GPU {m['gpu']}" if "gpu" in m else ""),
        f"- Software: Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}",
        f"- Device: {report.device}; onnxruntime provider {report.provider}; "
        f"{report.threads} intra-op threads for both backends",
        f"- Workload: {report.images} {_SOURCES[report.image_source]} images, "
        f"best of {report.repeats} repeats; latency is wall time per batch (per image at "
        "batch 1), throughput is images/s",
        "",
        "| batch | operating point | MFLOPs/image | torch ms/batch | onnx ms/batch "
        "| torch img/s | onnx img/s | onnx speed-up | same exit |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.batch_size} | {r.point} | {r.mflops:.2f} | {r.torch.ms_per_batch:.2f} "
            f"| {r.onnx.ms_per_batch:.2f} | {r.torch.images_per_s:.0f} | {r.onnx.images_per_s:.0f} "
            f"| {r.speedup:.2f}x | {100 * r.same_exit:.1f}% |"
        )
    return "\n".join(lines) + "\n"
