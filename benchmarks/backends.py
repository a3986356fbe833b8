"""Benchmark: early-exit inference with PyTorch eager vs the onnxruntime stage graphs.

Both backends run the runtime's early-exit loop (:func:`exitwise.runtime.run_early_exit`, the
one the server's engine runs) over the same images, batch by batch: run a stage, apply the exit
rule with one operating point's thresholds, drop the exited rows, run the next stage. Timings
alternate between the backends, repeat by repeat, and the best repeat is kept. No HTTP, no
queue, no batching across requests: this measures what each backend costs the server's engine,
not the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from exitwise.bundle import Bundle
from exitwise.preprocess import normalize
from exitwise.runtime import StageRunner, TorchStageRunner, run_early_exit
from exports.parity import load_parity_images
from exports.runtime import load_onnx_runner

from .machine import describe_machine, machine_line, sync
from .tables import markdown_table

LAST_EXIT = "last exit"
_SOURCES = {"heldout": "held-out", "random": "random"}


def _exits(runner: StageRunner, images: Tensor, thresholds: np.ndarray) -> np.ndarray:
    """Exit index (0-based) of each image through the runtime's loop, the one the server runs."""
    n, k = len(images), runner.num_exits
    rows = np.broadcast_to(thresholds, (n, k))
    return run_early_exit(runner, images, rows, np.full(n, k - 1, dtype=np.int64)).exit_index


def time_loop(runner: StageRunner, x: Tensor, batch: int, thresholds: np.ndarray) -> float:
    """Seconds to run all of ``x`` in batches of ``batch``."""
    sync(runner.device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        _exits(runner, x[i : i + batch], thresholds)
    sync(runner.device)
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
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)


def operating_points(bundle: Bundle) -> list[tuple[str, np.ndarray]]:
    """Each calibrated operating point's thresholds, then "last exit" (every image runs all)."""
    k = bundle.manifest.num_exits
    points = []
    if bundle.has_calibration:
        for p in bundle.calibration().operating_points:
            points.append((p.name, p.threshold_array()))
    last = np.full(k, np.inf)
    last[-1] = -np.inf
    points.append((LAST_EXIT, last))
    return points


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
    runners: dict[str, StageRunner] = {
        "torch": TorchStageRunner(bundle.load_model(), onnx.device),
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
        machine=describe_machine(onnx.device),
    )
    for batch in batch_sizes:
        n_batches = -(-len(x) // batch)
        for name, thresholds in operating_points(bundle):
            say(f"batch {batch}, {name}")
            exits = {
                b: np.concatenate(
                    [_exits(r, x[i : i + batch], thresholds) for i in range(0, len(x), batch)]
                )
                for b, r in runners.items()
            }  # also the warm-up
            best = {b: float("inf") for b in runners}
            for _ in range(repeats):
                for b, r in runners.items():
                    best[b] = min(best[b], time_loop(r, x, batch, thresholds))
            e = exits["torch"]
            report.rows.append(
                Row(
                    batch_size=batch,
                    point=name,
                    mflops=float(mflops[e].mean()),
                    exit_fractions=[float((e == j).mean()) for j in range(k)],
                    same_exit=float((exits["torch"] == exits["onnx"]).mean()),
                    torch=Timing(best["torch"], n_batches, len(x)),
                    onnx=Timing(best["onnx"], n_batches, len(x)),
                )
            )
    return report


def to_markdown(report: Report, command: str) -> str:
    m = report.machine
    header = [
        "batch", "operating point", "MFLOPs/image", "torch ms/batch", "onnx ms/batch",
        "torch img/s", "onnx img/s", "onnx speed-up", "same exit",
    ]  # fmt: skip
    rows = [
        [
            r.batch_size,
            r.point,
            f"{r.mflops:.2f}",
            f"{r.torch.ms_per_batch:.2f}",
            f"{r.onnx.ms_per_batch:.2f}",
            f"{r.torch.images_per_s:.0f}",
            f"{r.onnx.images_per_s:.0f}",
            f"{r.speedup:.2f}x",
            f"{100 * r.same_exit:.1f}%",
        ]
        for r in report.rows
    ]
    lines = [
        f"## `{report.bundle}` ({report.arch}, {report.num_exits} exits)"
        f"{', fp16 graphs' if report.fp16 else ''} on {m.get('gpu') or m['cpu']}",
        "",
        f"Command: `{command}`",
        "",
        f"- Machine: {machine_line(m)}",
        f"- Device: {report.device}; onnxruntime provider {report.provider}; "
        f"{report.threads} intra-op threads for both backends",
        f"- Workload: {report.images} {_SOURCES[report.image_source]} images, "
        f"best of {report.repeats} repeats; latency is wall time per batch (per image at "
        "batch 1), throughput is images/s",
        "",
        markdown_table(header, rows, "rlrrrrrrr"),
    ]
    return "\n".join(lines) + "\n"
